"""Reading and writing labelled datasets (augkit.labels.formats and one module per format).

Every registered format has datasets built by tests/_labelled.py (shapes drawn on real photos with their
exact ground truth): what is read equals the drawn truth; read -> write -> read gives the same labels and a
second write the same bytes; the output is read by each ecosystem's own reader (a YOLO reader written here
from Ultralytics' documented format, pycocotools when installed, xml.etree for VOC, PIL for masks).
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from _imgs import class_folder, photo, write
from _labelled import (
    FLIP_IDX,
    KPT_NAMES,
    NAMES,
    PALETTE,
    Built,
    coco_dataset,
    masks_dataset,
    rle_counts,
    rle_string,
    voc_dataset,
    yolo_dataset,
)

from augkit.errors import UsageError
from augkit.io.images import decode_image
from augkit.labels.coco import (
    counts_to_mask,
    decode_rle,
    encode_rle,
    flip_idx_from_names,
    mask_to_counts,
    rle_counts_to_string,
    rle_string_to_counts,
)
from augkit.labels.formats import (
    FORMATS,
    LabelError,
    LabelFormat,
    detect_kind,
    get_format,
    image_size_of,
    open_dataset,
    polygon_area,
)
from augkit.labels.model import DatasetInfo, Labels, Obj
from augkit.labels.yolo import label_path_for, merge_parts

#: every dataset variant the round trips run on; the first word is the format
VARIANTS = {
    "yolo-detect": lambda root: yolo_dataset(root, task="detect"),
    "yolo-segment": lambda root: yolo_dataset(root, task="segment"),
    "yolo-pose": lambda root: yolo_dataset(root, task="pose"),
    "coco-mixed-keypoints": lambda root: coco_dataset(root, segmentation="mixed", keypoints=True),
    "coco-rle-uncompressed": lambda root: coco_dataset(root, segmentation="rle_raw", category_ids=(3, 7, 9)),
    "coco-polygon": lambda root: coco_dataset(root, segmentation="polygon"),
    "coco-boxes": lambda root: coco_dataset(root, segmentation="none"),
    "voc": lambda root: voc_dataset(root),
    "masks-palette": lambda root: masks_dataset(root, palette=True),
    "masks-grey": lambda root: masks_dataset(root, palette=False),
}


def copy_through(info: DatasetInfo, dst: Path) -> dict[str, Labels]:
    """What augment does with an identity recipe: every image copied, its labels read and written; finish."""
    fmt = get_format(info.kind)
    records, read = [], {}
    for it in info.items:
        labels = fmt.read(info, it)
        rel = fmt.image_rel(info, it)
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(it.image, dst / rel)
        size = image_size_of(it.image)
        records.append(fmt.write(info, dst, it, rel, labels, size))
        read[rel] = labels
    fmt.finish(info, dst, records)
    return read


def label_bytes(root: Path) -> dict[str, bytes]:
    """Every file that is not an image, by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and (p.suffix.lower() not in (".jpg", ".png") or "masks" in p.parts)
    }


def assert_same_labels(a: Labels, b: Labels, tol: float) -> None:
    assert len(a.objects) == len(b.objects)
    for x, y in zip(a.objects, b.objects, strict=True):
        assert x.cls == y.cls
        np.testing.assert_allclose(x.box, y.box, atol=tol)
        assert len(x.polygons) == len(y.polygons)
        for p, q in zip(x.polygons, y.polygons, strict=True):
            np.testing.assert_allclose(p, q, atol=tol)
        assert (x.mask is None) == (y.mask is None)
        if x.mask is not None:
            assert np.array_equal(x.mask, y.mask)
        assert (x.keypoints is None) == (y.keypoints is None)
        if x.keypoints is not None:
            np.testing.assert_allclose(x.keypoints, y.keypoints, atol=tol)
        for key in ("iscrowd", "difficult", "pose"):
            assert x.attrs.get(key) == y.attrs.get(key)
    assert (a.semantic is None) == (b.semantic is None)
    if a.semantic is not None:
        assert np.array_equal(a.semantic, b.semantic)
    assert (a.palette is None) == (b.palette is None)
    if a.palette is not None:
        assert np.array_equal(a.palette, b.palette)


def test_every_registered_format_has_round_trip_variants():
    assert {v.split("-")[0] for v in VARIANTS} == set(FORMATS)
    assert all(isinstance(f, LabelFormat) and f.name == n for n, f in FORMATS.items())


# ============================================================================= ground truth


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_read_gives_the_drawn_truth(variant, tmp_path):
    built: Built = VARIANTS[variant](tmp_path / "src")
    assert detect_kind(built.root) == variant.split("-")[0]
    info = open_dataset(built.root)
    fmt = FORMATS[info.kind]
    assert sum(len(s) for s in built.scenes.values()) == len(info.items)  # background images too
    for it in info.items:
        scene = built.scene(it.image.stem)
        labels = fmt.read(info, it)
        if info.kind == "masks":
            assert np.array_equal(labels.semantic, scene.semantic())
            continue
        assert [info.names[o.cls] for o in labels.objects] == [NAMES[s.cls] for s in scene.shapes]
        for o, s in zip(labels.objects, scene.shapes, strict=True):
            if variant == "yolo-segment":
                np.testing.assert_allclose(o.polygons[0], s.polygon, atol=1e-3)
                np.testing.assert_allclose(o.box, [*s.polygon.min(0), *s.polygon.max(0)], atol=1e-3)
            else:
                np.testing.assert_allclose(o.box, s.box, atol=1e-3)  # exact pixel edges
            if o.mask is not None:
                assert np.array_equal(o.mask, s.mask)
            if variant in ("coco-polygon",) or (variant.startswith("coco-mixed") and s.cls != 2):
                np.testing.assert_allclose(o.polygons[0], s.polygon, atol=1e-3)
            if s.keypoints is not None:
                np.testing.assert_allclose(o.keypoints, s.keypoints, atol=1e-3)
        if info.kind == "voc":
            assert [o.attrs["difficult"] for o in labels.objects] == [str(int(s.cls == 1)) for s in scene.shapes]


def test_pose_metadata(tmp_path):
    info = open_dataset(yolo_dataset(tmp_path / "y", task="pose").root)
    assert info.kpt_shape == (3, 3) and info.flip_idx == FLIP_IDX
    info = open_dataset(coco_dataset(tmp_path / "c", keypoints=True).root)
    assert info.kpt_shape == (3, 3) and info.keypoint_names == KPT_NAMES
    assert info.flip_idx == FLIP_IDX  # from the left_/right_ names
    assert info.skeleton == [[0, 2], [1, 2]]  # 0-based
    assert flip_idx_from_names(["nose", "left_eye", "right_eye", "left_ear", "right_ear"]) == [0, 2, 1, 4, 3]
    assert flip_idx_from_names(["a", "b"]) is None


def test_coco_category_ids_map_to_class_indices(tmp_path):
    info = open_dataset(coco_dataset(tmp_path / "c", category_ids=(7, 3, 9)).root)
    assert info.names == ["triangle", "box", "ellipse"]  # sorted by id
    assert info.extra["category_ids"] == [3, 7, 9]


# ============================================================================= round trips


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_read_write_read_keeps_the_labels_and_a_second_write_the_bytes(variant, tmp_path):
    built = VARIANTS[variant](tmp_path / "src")
    info = open_dataset(built.root)
    first = copy_through(info, tmp_path / "out1")
    info1 = open_dataset(tmp_path / "out1")
    assert info1.kind == info.kind and info1.names == info.names and info1.kpt_shape == info.kpt_shape
    assert {s: len(v) for s, v in info1.splits.items()} == {s: len(v) for s, v in info.splits.items()}
    fmt = FORMATS[info.kind]
    tol = 2e-4 * 96 if info.kind == "yolo" else 0.01  # YOLO keeps 6 decimals of a fraction, COCO 2 of a pixel
    for it in info1.items:
        assert_same_labels(first[fmt.image_rel(info1, it)], fmt.read(info1, it), tol)
    copy_through(info1, tmp_path / "out2")
    assert label_bytes(tmp_path / "out1") == label_bytes(tmp_path / "out2")
    assert fmt.check(info1) == []


def test_yolo_output_read_by_a_reader_of_ultralytics_documented_format(tmp_path):
    """docs.ultralytics.com/datasets/detect: one row per object ``class x_center y_center width height``,
    normalized 0..1; labels/ mirrors images/; data.yaml names the splits and classes."""
    built = yolo_dataset(tmp_path / "src", task="pose")
    copy_through(open_dataset(built.root), tmp_path / "out")
    data = yaml.safe_load((tmp_path / "out" / "data.yaml").read_text())
    assert data["names"] == dict(enumerate(NAMES)) and data["kpt_shape"] == [3, 3] and data["flip_idx"] == FLIP_IDX
    seen = 0
    for split in ("train", "val"):
        for img in sorted((tmp_path / "out" / data[split]).iterdir()):
            txt = Path(str(img).replace("/images/", "/labels/")).with_suffix(".txt")
            scene = built.scene(img.stem)
            if not scene.shapes:
                assert not txt.exists()
                continue
            W, H = scene.size
            rows = [list(map(float, r.split())) for r in txt.read_text().splitlines()]
            for row, s in zip(rows, scene.shapes, strict=True):
                assert len(row) == 1 + 4 + 3 * 3 and all(0 <= v <= 1 for v in row[1:5])
                c, xc, yc, w, h = row[:5]
                assert int(c) == s.cls
                np.testing.assert_allclose(
                    [(xc - w / 2) * W, (yc - h / 2) * H, (xc + w / 2) * W, (yc + h / 2) * H], s.box, atol=1e-3
                )
                kp = np.array(row[5:]).reshape(3, 3) * [W, H, 1]
                np.testing.assert_allclose(kp, s.keypoints, atol=1e-3)
                seen += 1
    assert seen == 4 * 3


def test_coco_output_loads_in_pycocotools(tmp_path):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    built = coco_dataset(tmp_path / "src", segmentation="mixed", keypoints=True, category_ids=(2, 5, 11))
    copy_through(open_dataset(built.root), tmp_path / "out")
    for split in ("train", "val"):
        coco = COCO(str(tmp_path / "out" / "annotations" / f"instances_{split}.json"))
        assert sorted(coco.getCatIds()) == [2, 5, 11]  # categories unchanged
        img_ids = coco.getImgIds()
        assert len(set(img_ids)) == len(built.scenes[split])
        ann_ids = coco.getAnnIds()
        assert len(set(ann_ids)) == len(ann_ids) == 3 * len([s for s in built.scenes[split].values() if s.shapes])
        for img in coco.loadImgs(img_ids):
            scene = built.scene(Path(img["file_name"]).stem)
            assert (tmp_path / "out" / "images" / split / img["file_name"]).is_file()
            assert (img["width"], img["height"]) == scene.size
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
            for a, s in zip(anns, scene.shapes, strict=True):
                assert a["category_id"] == (2, 5, 11)[s.cls]
                m = coco.annToMask(a).astype(bool)
                iou = (m & s.mask).sum() / (m | s.mask).sum()
                # RLE: exact; polygons: pycocotools' own rasterizer (pixel indices), >= 0.85 on these small shapes
                assert iou == 1.0 if isinstance(a["segmentation"], dict) else iou >= 0.85
                kp = np.array(a["keypoints"], float).reshape(-1, 3)
                np.testing.assert_allclose(kp[:, :2] + 0.5, s.keypoints[:, :2], atol=0.01)
                assert a["num_keypoints"] == 3


def test_coco_output_ids_do_not_depend_on_the_order_outputs_finished(tmp_path):
    built = coco_dataset(tmp_path / "src", splits={"train": 4})
    info = open_dataset(built.root)
    fmt = FORMATS["coco"]
    recs = [fmt.write(info, tmp_path, it, fmt.image_rel(info, it), fmt.read(info, it), (96, 72)) for it in info.items]
    fmt.finish(info, tmp_path / "a", recs)
    random.Random(1).shuffle(recs)
    fmt.finish(info, tmp_path / "b", recs)
    rel = "annotations/instances_train.json"
    assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    doc = json.loads((tmp_path / "a" / rel).read_text())
    assert [i["id"] for i in doc["images"]] == list(range(1, 6))
    assert [a["id"] for a in doc["annotations"]] == list(range(1, 13))
    assert doc["info"] == {"description": "augkit test shapes"}  # other top-level fields kept


def test_voc_output_read_by_xml_etree(tmp_path):
    built = voc_dataset(tmp_path / "src")
    info = open_dataset(built.root)
    fmt = FORMATS["voc"]
    it = next(i for i in info.items if i.image.stem == "train_01")
    labels = fmt.read(info, it)
    labels.objects[0].attrs["truncated"] = 1  # what the geometry sets on a clipped box
    fmt.write(info, tmp_path / "out", it, "JPEGImages/train_01.jpg", labels, (96, 72))
    root = ET.parse(tmp_path / "out" / "Annotations" / "train_01.xml").getroot()
    assert root.findtext("filename") == "train_01.jpg" and root.findtext("size/width") == "96"
    assert root.findtext("folder") == "JPEGImages"  # header kept
    objs = root.findall("object")
    scene = built.scene("train_01")
    for o, s in zip(objs, scene.shapes, strict=True):
        x0, y0, x1, y1 = (int(v) for v in s.box)
        assert o.findtext("name") == NAMES[s.cls]
        assert [int(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")] == [x0 + 1, y0 + 1, x1, y1]
        assert o.findtext("difficult") == str(int(s.cls == 1)) and o.findtext("pose") == "Unspecified"
    assert [o.findtext("truncated") for o in objs] == ["1", "0", "0"]


def test_masks_keep_the_palette_or_stay_grey(tmp_path):
    from PIL import Image

    for palette in (True, False):
        built = masks_dataset(tmp_path / f"src{palette}", palette=palette)
        copy_through(open_dataset(built.root), tmp_path / f"out{palette}")
        im = Image.open(tmp_path / f"out{palette}" / "masks" / "train" / "train_00.png")
        assert im.mode == ("P" if palette else "L")
        assert np.array_equal(np.array(im), built.scene("train_00").semantic())
        if palette:
            assert np.array_equal(np.array(im.getpalette()[:768], np.uint8).reshape(-1, 3), PALETTE)
        assert (tmp_path / f"out{palette}" / "classes.txt").read_text().split() == ["background", *NAMES]


def test_yolo_background_images_stay_background(tmp_path):
    built = yolo_dataset(tmp_path / "src", splits={"train": 1}, background=1)
    (built.root / "labels" / "train" / "train_00.txt").write_text("")  # an empty label file: background too
    info = open_dataset(built.root)
    fmt = FORMATS["yolo"]
    by_stem = {it.image.stem: it for it in info.items}
    assert by_stem["train_bg00"].label_file is None
    assert fmt.read(info, by_stem["train_bg00"]).objects == []
    assert fmt.read(info, by_stem["train_00"]).objects == []
    copy_through(info, tmp_path / "out")
    assert not (tmp_path / "out" / "labels" / "train" / "train_bg00.txt").exists()  # none in, none out
    assert (tmp_path / "out" / "labels" / "train" / "train_00.txt").read_text() == ""
    assert fmt.check(info) == []


# ============================================================================= edges


@pytest.mark.parametrize("edge", ["1.0000001", "-0.0000001"])
def test_float_noise_at_the_border_is_clipped_never_an_error(edge, tmp_path):
    W, H = 96, 72
    root = tmp_path / "y"
    write(root / "images" / "train" / "a.png", photo("chelsea", (W, H)))
    hi = float(edge) > 0
    x = "0.9" if hi else "0.1"
    rows = [
        f"0 {x} 0.5 0.2 0.4",  # a box reaching the edge: cx +- w/2 = 1.0 or 0.0 exactly, then noise below
        f"1 {edge} 0.5 0.5 0.1 0.5 0.9",  # a polygon with a vertex on the edge plus noise
    ]
    rows[0] = f"0 {0.9 + 1e-7 if hi else 0.1 - 1e-7} 0.5 0.2 0.4"
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("\n".join(rows) + "\n")
    (root / "data.yaml").write_text("train: images/train\nnames: [a, b]\n")
    info = open_dataset(root)
    labels = FORMATS["yolo"].read(info, info.items[0])
    boxes = np.array([o.box for o in labels.objects])
    assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= W and boxes[:, [1, 3]].max() <= H
    assert labels.objects[1].polygons[0][0, 0] == (W if hi else 0.0)
    # COCO and VOC: a box ending a hair beyond the image
    c = coco_dataset(tmp_path / "c", splits={"train": 1}, background=0)
    j = c.root / "annotations" / "instances_train.json"
    doc = json.loads(j.read_text())
    doc["annotations"][0]["bbox"] = [0.0, 0.0, W + 1e-7, H * 1.0000001]
    j.write_text(json.dumps(doc))
    info = open_dataset(c.root)
    np.testing.assert_allclose(FORMATS["coco"].read(info, info.items[0]).objects[0].box, [0, 0, W, H])


def test_keypoints_outside_the_image_are_written_invisible_and_counts_stay(tmp_path):
    y = open_dataset(yolo_dataset(tmp_path / "y", task="pose", splits={"train": 1}, background=0).root)
    c = open_dataset(coco_dataset(tmp_path / "c", keypoints=True, splits={"train": 1}, background=0).root)
    kp = np.array([[-3.0, 10.0, 2.0], [20.0, 30.0, 2.0], [5.0, 5.0, 0.0]])
    labels = Labels(objects=[Obj(0, [1, 2, 40, 50], keypoints=kp)])
    rec = FORMATS["yolo"].write(y, tmp_path / "yo", y.items[0], "images/train/a.png", labels, (96, 72))
    row = (tmp_path / "yo" / rec["label"]).read_text().split()
    assert len(row) == 1 + 4 + 9 and row[5:8] == ["0.000000", "0.000000", "0"] and row[-1] == "0"
    rec = FORMATS["coco"].write(c, tmp_path / "co", c.items[0], "images/train/a.png", labels, (96, 72))
    ann = rec["annotations"][0]
    assert ann["keypoints"] == [0, 0, 0, 19.5, 29.5, 2, 0, 0, 0] and ann["num_keypoints"] == 1


def test_rle_codec_matches_the_coco_mask_api():
    rng = np.random.default_rng(0)
    masks = [np.zeros((7, 5), bool), np.ones((7, 5), bool), rng.random((40, 33)) > 0.5]
    big = np.zeros((300, 200), bool)
    big[10:290, 20:25] = True  # long runs: multi-character numbers and negative deltas
    big[0, 0] = True  # starts with a 1: a leading empty run of zeros
    masks.append(big)
    for m in masks:
        counts = mask_to_counts(m)
        assert counts == rle_counts(m)  # the test helpers' independent reference
        s = rle_counts_to_string(counts)
        assert s == rle_string(counts)
        assert rle_string_to_counts(s) == counts
        assert np.array_equal(counts_to_mask(counts, *m.shape), m)
        for compressed in (True, False):
            assert np.array_equal(decode_rle(encode_rle(m, compressed)), m)
    try:
        from pycocotools import mask as mask_api
    except ImportError:
        return
    for m in masks:
        ref = mask_api.encode(np.asfortranarray(m.astype(np.uint8)))
        assert encode_rle(m)["counts"] == ref["counts"].decode()
        assert np.array_equal(decode_rle({"size": list(m.shape), "counts": ref["counts"].decode()}), m)
    with pytest.raises(ValueError, match="add up"):
        counts_to_mask([3, 4], 3, 3)


def test_merge_parts_joins_pieces_without_adding_area():
    a = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], float)
    b = a + [10, 0]
    c = a + [20, 5]
    merged = merge_parts([a, b, c])
    assert polygon_area(merged) == pytest.approx(3 * 16)
    for part in (a, b, c):
        assert all(any(np.array_equal(p, q) for q in merged) for p in part)


def test_yolo_label_path_rule_and_non_ascii_names(tmp_path):
    assert label_path_for("images/train/a.b.jpg") == Path("labels/train/a.b.txt")
    assert label_path_for("/d/images/x/images/train/a.jpg") == Path("/d/images/x/labels/train/a.txt")
    built = yolo_dataset(tmp_path / "y", splits={"train": 1}, background=0)
    for p in ("images/train/train_00.png", "labels/train/train_00.txt"):
        src = built.root / p
        src.rename(src.with_name("кошка 🐱" + src.suffix))
    info = open_dataset(built.root)
    assert info.items[0].label_file is not None and info.items[0].image.stem == "кошка 🐱"
    assert len(FORMATS["yolo"].read(info, info.items[0]).objects) == 3


def test_image_size_follows_exif_orientation(tmp_path):
    from PIL import Image

    img = Image.fromarray(photo("chelsea", (40, 30)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: decoded 30 wide, 40 high
    img.save(tmp_path / "r.jpg", exif=exif)
    img.save(tmp_path / "n.jpg")
    assert image_size_of(tmp_path / "r.jpg") == (30, 40) and image_size_of(tmp_path / "n.jpg") == (40, 30)
    for name in ("r.jpg", "n.jpg"):  # the size augkit's decode policy gives
        h, w = decode_image((tmp_path / name).read_bytes()).shape[:2]
        assert image_size_of(tmp_path / name) == (w, h)


# ============================================================================= detection and errors


def test_a_classification_folder_is_not_labelled(tmp_path):
    assert detect_kind(class_folder(tmp_path / "cls")) is None
    with pytest.raises(UsageError, match="does not look like a labelled dataset"):
        open_dataset(tmp_path / "cls")


def test_a_folder_that_looks_like_two_kinds_is_ambiguous(tmp_path):
    root = yolo_dataset(tmp_path / "d").root
    coco = coco_dataset(tmp_path / "c").root
    shutil.copytree(coco / "annotations", root / "annotations")
    with pytest.raises(UsageError, match=r"more than one kind.*coco.*--labels yolo\|coco"):
        detect_kind(root)
    assert open_dataset(root, "yolo").kind == "yolo"  # forcing the kind settles it
    with pytest.raises(UsageError, match="does not look like a voc dataset"):
        open_dataset(root, "voc")


def test_unknown_kind_suggests_a_name(tmp_path):
    with pytest.raises(UsageError, match="did you mean 'yolo'"):
        get_format("yollo")
    with pytest.raises(UsageError, match="classification"):
        get_format("folders")
    with pytest.raises(UsageError, match="folder not found"):
        open_dataset(tmp_path / "nope")


def test_label_error_pickles_with_its_line():
    e = LabelError("/d/labels/a.txt", "class id out of range", "class 5", 3)
    assert str(e) == "/d/labels/a.txt:3: class id out of range (class 5)"
    back = pickle.loads(pickle.dumps(e))
    assert (back.path, back.reason, back.detail, back.line, str(back)) == (e.path, e.reason, e.detail, 3, str(e))


def test_bad_data_yaml_names_the_line(tmp_path):
    root = yolo_dataset(tmp_path / "y").root
    (root / "data.yaml").write_text("train: images/train\nnames: [a, b]\nkpt_shape: [3, 4]\n")
    with pytest.raises(UsageError, match=r"data.yaml:3: kpt_shape must be"):
        open_dataset(root)
    (root / "data.yaml").write_text("train: images/train\nnames: [a]\nnames: [b]\n")
    with pytest.raises(UsageError, match=r"data.yaml.*duplicate"):
        open_dataset(root)


def test_coco_json_that_is_not_json_names_the_line(tmp_path):
    root = coco_dataset(tmp_path / "c").root
    (root / "annotations" / "instances_val.json").write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(UsageError, match=r"instances_val.json:2: not valid JSON"):
        open_dataset(root)


def test_yolo_roboflow_layout_and_image_lists(tmp_path):
    """Roboflow's export: data.yaml says ``train: ../train/images`` (Ultralytics drops the ``../`` when that
    is not there) with train/images + train/labels; and splits given as .txt lists of images."""
    built = yolo_dataset(tmp_path / "b", splits={"train": 2, "valid": 1}, background=0)
    rf = tmp_path / "rf"
    for split in ("train", "valid"):
        shutil.copytree(built.root / "images" / split, rf / split / "images")
        shutil.copytree(built.root / "labels" / split, rf / split / "labels")
    (rf / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\nnc: 3\nnames: ['box', 'triangle', 'ellipse']\n"
        "path: ../datasets/rf\n"
    )
    info = open_dataset(rf)
    assert {k: len(v) for k, v in info.splits.items()} == {"train": 2, "val": 1}
    assert all(it.label_file is not None for it in info.items)
    copy_through(info, tmp_path / "out")
    data = yaml.safe_load((tmp_path / "out" / "data.yaml").read_text())
    assert (data["train"], data["val"], data["nc"]) == ("train/images", "valid/images", 3) and "path" not in data
    assert (tmp_path / "out" / "valid" / "labels" / "valid_00.txt").is_file()

    lst = tmp_path / "lists"
    shutil.copytree(built.root, lst)
    (lst / "train.txt").write_text("./images/train/train_00.png\n./images/train/train_01.png\n")
    (lst / "data.yaml").write_text("train: train.txt\nval: images/valid\nnames: [box, triangle, ellipse]\n")
    info = open_dataset(lst)
    assert [it.image.name for it in info.splits["train"]] == ["train_00.png", "train_01.png"]
    copy_through(info, tmp_path / "out2")
    data = yaml.safe_load((tmp_path / "out2" / "data.yaml").read_text())
    assert data["train"] == "train.txt"
    assert (tmp_path / "out2" / "train.txt").read_text().split() == [
        "./images/train/train_00.png",
        "./images/train/train_01.png",
    ]
    assert len(open_dataset(tmp_path / "out2").splits["train"]) == 2


def test_yolo_pose_with_two_values_per_keypoint(tmp_path):
    """kpt_shape [K, 2]: no visibility column; a labelled point reads as v=2, ``0 0`` as not labelled."""
    root = yolo_dataset(tmp_path / "y", task="pose", splits={"train": 1}, background=0).root
    f = root / "labels" / "train" / "train_00.txt"
    rows = []
    for row in f.read_text().splitlines():
        v = row.split()
        kp = [v[5 + 3 * i : 7 + 3 * i] for i in range(3)]
        kp[2] = ["0", "0"]  # the third point not labelled
        rows.append(" ".join(v[:5] + [x for p in kp for x in p]))
    f.write_text("\n".join(rows) + "\n")
    (root / "data.yaml").write_text("train: images/train\nnames: [box, triangle, ellipse]\nkpt_shape: [3, 2]\n")
    info = open_dataset(root)
    labels = FORMATS["yolo"].read(info, info.items[0])
    assert [list(o.keypoints[:, 2]) for o in labels.objects] == [[2, 2, 0]] * 3
    copy_through(info, tmp_path / "out")
    out_rows = (tmp_path / "out" / "labels" / "train" / "train_00.txt").read_text().splitlines()
    assert all(len(r.split()) == 1 + 4 + 3 * 2 and r.endswith("0.000000 0.000000") for r in out_rows)


def test_coco_roboflow_layout(tmp_path):
    """Roboflow's COCO export: <split>/_annotations.coco.json beside the split's images."""
    built = coco_dataset(tmp_path / "b", splits={"train": 2, "valid": 1}, background=0)
    rf = tmp_path / "rf"
    for split in ("train", "valid"):
        shutil.copytree(built.root / "images" / split, rf / split)
        shutil.copyfile(built.root / "annotations" / f"instances_{split}.json", rf / split / "_annotations.coco.json")
    assert detect_kind(rf) == "coco"
    info = open_dataset(rf)
    assert {k: len(v) for k, v in info.splits.items()} == {"train": 2, "valid": 1}
    assert all(it.image.is_file() for it in info.items)
    copy_through(info, tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "valid" / "_annotations.coco.json").read_text())
    assert [i["file_name"] for i in doc["images"]] == ["valid_00.png"] and len(doc["annotations"]) == 3
