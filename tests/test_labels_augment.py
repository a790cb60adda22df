"""augkit augment on labelled datasets: splits, records, resume, worker counts, round trips.

Every dataset is built by ``tests/_labelled.py``: objects drawn in pure colours on small real photos,
with their exact ground truth. The geometry of each op is tested with the geometry module; here the
checks are what a user of ``augment`` sees: DST is a complete dataset of the same kind that the
ecosystem's readers accept (a YOLO reader written from Ultralytics' documented format, pycocotools,
xml.etree), the labels of a flipped copy lie on the flipped objects, the manifest's counts add up,
bad label files are reported per file with nothing lost, and the files do not depend on the worker
count or on a kill -9 in the middle of the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from _labelled import COLORS, NAMES, coco_dataset, color_mask, masks_dataset, voc_dataset, yolo_dataset
from typer.testing import CliRunner

from augkit.cli import app
from augkit.errors import UsageError
from augkit.offline.executors.local import LocalExecutor
from augkit.offline.labelled import LabelledOptions, augment_labelled, copies_per_image, make_labelled_plan
from augkit.offline.run import AugmentOptions, make_plan, run_plan
from augkit.offline.run import augment as plain_augment
from augkit.recipe.api import parse_recipe

runner = CliRunner()

FLIP = parse_recipe("name: hflip\ntrain:\n  - flip: {direction: horizontal, p: 1}\n", "<flip>")
MOVE = parse_recipe(
    "name: move\ntrain:\n  - flip: {direction: horizontal, p: 0.5}\n"
    "  - affine: {scale: [0.8, 1.2], translate: 0.15, rotate: 20, p: 1}\n"
    "  - color: {brightness: 0.2, p: 0.5}\n",
    "<move>",
)
# a shift far enough that objects near the edge leave the frame or are cut: kept/clipped/dropped all occur
SHIFT = parse_recipe("name: shift\ntrain:\n  - shift: {x: [0.3, 0.45], y: 0, p: 1}\n", "<shift>")


def files(root: Path, skip=("augkit-run.yaml",)) -> dict[str, bytes]:
    """Every file under ``root`` (a symlink: its target), but the run history (it has times)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in skip:
            out[rel] = ("-> " + os.readlink(p)).encode() if p.is_symlink() else p.read_bytes()
    return out


def flat(text: str) -> str:
    """CLI output without the terminal's line wrapping."""
    return " ".join(text.split())


def rows(dst: Path) -> list[dict]:
    return [json.loads(line) for line in (dst / "manifest.jsonl").read_text().splitlines()]


def augment(src, dst, recipe=MOVE, executor=None, **kw):
    plan = make_labelled_plan(src, dst, recipe, LabelledOptions(**kw))
    return run_plan(plan, executor=executor)


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ============================================================================= a YOLO reader from the docs


def read_yolo(root: Path) -> dict[str, dict[str, tuple[np.ndarray, list[list[float]]]]]:
    """A reader written from Ultralytics' documented dataset format (docs.ultralytics.com/datasets/detect):
    data.yaml names + split folders of images; each image's labels in the file whose path swaps the
    last ``/images/`` for ``/labels/`` and the suffix for ``.txt``; one row ``class x_center y_center
    width height`` (or ``class x1 y1 ... xn yn``) normalized to 0..1; no file: no objects.
    Returns split -> image path -> (image RGB, rows)."""
    data = yaml.safe_load((root / "data.yaml").read_text())
    names = data["names"]
    nc = len(names)
    base = root / data.get("path", ".")
    out: dict = {}
    for split in ("train", "val", "test"):
        if split not in data:
            continue
        folder = base / data[split]
        out[split] = {}
        for img in sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")):
            s = str(img)
            i = s.rfind(os.sep + "images" + os.sep)
            lbl = Path(s[:i] + os.sep + "labels" + os.sep + s[i + 8 :]).with_suffix(".txt")
            table = []
            if lbl.exists():
                for line in lbl.read_text().splitlines():
                    v = [float(x) for x in line.split()]
                    assert v[0] == int(v[0]) and 0 <= v[0] < nc, f"{lbl}: class {v[0]}"
                    assert len(v) == 5 or (len(v) >= 7 and len(v) % 2 == 1), f"{lbl}: {len(v)} values"
                    assert all(0.0 <= x <= 1.0 for x in v[1:]), f"{lbl}: {line}"
                    table.append(v)
            out[split][img.name] = (rgb(img), table)
    return out


def _box_px(row: list[float], w: int, h: int) -> tuple[int, int, int, int]:
    cx, cy, bw, bh = row[1:5]
    return (round((cx - bw / 2) * w), round((cy - bh / 2) * h), round((cx + bw / 2) * w), round((cy + bh / 2) * h))


# ============================================================================= YOLO


def test_yolo_train_augmented_val_copied_and_a_reader_from_the_docs_agrees(tmp_path):
    built = yolo_dataset(tmp_path / "src", splits={"train": 3, "val": 2}, background=1)
    dst = tmp_path / "dst"
    r = augment(built.root, dst, FLIP, copies=2, seed=1, workers=1)
    assert r.exit_code == 0 and r.written == 4 * 2 + 2 and not r.bad
    ds = read_yolo(dst)
    assert set(ds) == {"train", "val"}
    assert sorted(ds["train"]) == sorted(f"{s}__aug{k}.png" for s in built.scenes["train"] for k in (0, 1))
    # unaugmented split: the source's files, byte for byte
    for stem in built.scenes["val"]:
        for rel in (f"images/val/{stem}.png", f"labels/val/{stem}.txt"):
            assert (dst / rel).read_bytes() == (built.root / rel).read_bytes()
    # a flipped copy: each drawn object is mirrored, and its label is on it
    for stem, scene in built.scenes["train"].items():
        img, table = ds["train"][f"{stem}__aug0.png"]
        W, H = scene.size
        assert len(table) == len(scene.shapes)  # a background image stays a background image
        assert (dst / f"labels/train/{stem}__aug0.txt").exists() == bool(scene.shapes)
        for row, shape in zip(sorted(table), sorted(scene.shapes, key=lambda s: s.cls)):
            x0, y0, x1, y1 = shape.box
            assert np.allclose(_box_px(row, W, H), (W - x1, y0, W - x0, y1), atol=1)
            bx0, by0, bx1, by1 = _box_px(row, W, H)
            on = color_mask(img, COLORS[shape.cls])[by0:by1, bx0:bx1]
            assert on.mean() > 0.4  # the label covers the drawn object (a triangle fills about half its box)


def test_yolo_records_say_what_happened_to_each_object_and_the_counts_add_up(tmp_path):
    built = yolo_dataset(tmp_path / "src", splits={"train": 4, "val": 1}, background=1)
    dst = tmp_path / "dst"
    r = augment(built.root, dst, SHIFT, copies=2, seed=0, workers=1)
    assert r.exit_code == 0
    aug = [row for row in rows(dst) if row["kind"] == "augmented"]
    assert len(aug) == 5 * 2
    fates = {"kept": 0, "clipped": 0, "dropped": 0}
    for row in aug:
        stem = Path(row["source"]).stem
        o = row["objects"]
        assert o["kept"] + o["clipped"] + o["dropped"] == len(built.scene(stem).shapes)
        assert len(o["dropped_objects"]) == o["dropped"] and len(o["clipped_objects"]) == o["clipped"]
        assert all(d["reason"] and d["class"] in NAMES for d in o["dropped_objects"])
        assert sum(o["dropped_by"].values()) == o["dropped"]
        label = dst / "labels/train" / (Path(row["output"]).stem + ".txt")
        n = len(label.read_text().splitlines()) if label.exists() else 0
        assert n == o["kept"] + o["clipped"]  # the label file holds exactly the objects kept
        assert row["split"] == "train" and row["transforms"]
        for k in fates:
            fates[k] += o[k]
    assert fates["dropped"] > 0 and fates["clipped"] > 0 and fates["kept"] > 0  # the shift does all three
    t = r.plan.totals
    assert (t["kept"], t["clipped"], t["dropped"]) == (fates["kept"], fates["clipped"], fates["dropped"])
    assert sum(t["reasons"].values()) == t["dropped"]
    assert [row["split"] for row in rows(dst) if row["kind"] == "original"] == ["val"]


def test_byte_identical_at_1_and_2_workers(tmp_path):
    built = yolo_dataset(tmp_path / "src", task="segment", splits={"train": 6, "val": 1})
    augment(built.root, tmp_path / "w1", copies=3, seed=5, workers=1)
    augment(built.root, tmp_path / "w2", copies=3, seed=5, executor=LocalExecutor(2, adaptive=False))
    a, b = files(tmp_path / "w1"), files(tmp_path / "w2")
    assert a == b and len(a) > 20
    c = coco_dataset(tmp_path / "coco", splits={"train": 5, "val": 1}, keypoints=True)
    augment(c.root, tmp_path / "c1", copies=2, seed=5, workers=1)
    augment(c.root, tmp_path / "c2", copies=2, seed=5, executor=LocalExecutor(2, adaptive=False))
    assert files(tmp_path / "c1") == files(tmp_path / "c2")


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from augkit.offline.executors.local import LocalExecutor
    from augkit.offline.labelled import LabelledOptions, make_labelled_plan
    from augkit.offline.run import run_plan
    from augkit.recipe.api import load_recipe

    class KillAfter(LocalExecutor):
        def run(self, task, items):
            for i, res in enumerate(super().run(task, items)):
                yield res
                if i + 1 == int(sys.argv[3]):  # the row of item N is in the journal: kill -9 now
                    os.kill(os.getpid(), signal.SIGKILL)

    plan = make_labelled_plan(sys.argv[1], sys.argv[2], load_recipe("default"), LabelledOptions(copies=2, seed=3))
    run_plan(plan, executor=KillAfter(int(sys.argv[4]), adaptive=False))
    """
)


@pytest.mark.parametrize(("kind", "workers"), [("coco", 1), ("yolo", 1), ("coco", 2)])
def test_killed_run_resumes_to_the_files_of_an_uninterrupted_one(kind, workers, tmp_path):
    build = {"coco": coco_dataset, "yolo": yolo_dataset}[kind]
    built = build(tmp_path / "src", splits={"train": 4, "val": 1})
    dst, ref = tmp_path / "dst", tmp_path / "ref"
    script = tmp_path / "kill.py"
    script.write_text(_KILLER)
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    cmd = [sys.executable, str(script), str(built.root), str(dst), "6", str(workers)]
    proc = subprocess.run(cmd, env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    journal = dst / ".augkit-journal.jsonl"
    lines = journal.read_text().splitlines()
    assert len(lines) == 6 and not (dst / "manifest.jsonl").exists()
    time.sleep(1.5 if workers > 1 else 0)  # the killed run's pool workers see their parent gone and end
    journal.write_text("\n".join(lines[:-1]) + "\n")  # the last output is on disk without its row
    (dst / "annotations").mkdir(exist_ok=True)  # a dataset file's temp, as a kill inside its write leaves it
    (dst / "annotations" / ".instances_train.json.0123abcd.tmp").write_text("{")
    r = augment(built.root, dst, parse_recipe(_default_text(), "default"), copies=2, seed=3, workers=1)
    # 5 rows kept; the 6th output (and, with a pool, what its workers finished) is on disk without a row:
    # verified, counted as done too
    assert r.exit_code == 0 and r.verified >= 1 and r.already_done == 5 + r.verified
    assert r.already_done + r.written == 11
    augment(built.root, ref, parse_recipe(_default_text(), "default"), copies=2, seed=3, workers=1)
    assert files(dst) == files(ref)
    assert not list(dst.rglob(".*.tmp")) and not journal.exists()


def _default_text() -> str:
    from augkit.recipe.api import load_recipe

    return load_recipe("default").text


def test_bad_label_files_are_reported_per_file_and_nothing_is_lost(tmp_path):
    built = yolo_dataset(tmp_path / "src", splits={"train": 5, "val": 1}, background=0)
    lbl = built.root / "labels" / "train"
    (lbl / "train_01.txt").write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.1 0.1\n")  # class 7 of 3
    (lbl / "train_03.txt").write_text("1 0.5 nan-ish 0.2\n")  # not numbers
    (lbl / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # a label file without an image
    dst = tmp_path / "dst"
    r = augment(built.root, dst, FLIP, copies=1, workers=1)
    assert r.exit_code == 3
    errors = [json.loads(line) for line in (dst / "errors.jsonl").read_text().splitlines()]
    by_path = {e["path"]: e for e in errors}
    assert "class id out of range" in by_path["images/train/train_01.png"]["reason"]
    assert "train_01.txt:2" in by_path["images/train/train_01.png"]["detail"]
    assert "bad label line" in by_path["images/train/train_03.png"]["reason"]
    assert "orphan label file" in by_path["labels/train/orphan.txt"]["reason"]
    planned = len(r.plan.items)
    assert r.written + len([b for b in r.bad if b["path"].startswith("images/")]) == planned
    assert not (dst / "images/train/train_01__aug0.png").exists()
    assert (dst / "labels/train/train_00__aug0.txt").exists()
    out = runner.invoke(app, ["augment", str(built.root), str(tmp_path / "cli"), "--recipe", "light"])
    assert out.exit_code == 3 and "train_01.txt:2" in "".join(out.output.split()) and "Traceback" not in out.output


def test_per_class_balances_objects_of_rare_classes(tmp_path):
    built = yolo_dataset(tmp_path / "src", splits={"train": 4, "val": 1}, background=0)
    lbl = built.root / "labels" / "train"
    for stem in ("train_00", "train_01", "train_02"):  # class 2 (ellipse) left only in train_03
        rows_ = [r for r in (lbl / f"{stem}.txt").read_text().splitlines() if not r.startswith("2 ")]
        (lbl / f"{stem}.txt").write_text("\n".join(rows_) + "\n")
    dst = tmp_path / "dst"
    r = augment(built.root, dst, FLIP, per_class=6, seed=0, workers=1)
    assert r.exit_code == 0
    counts = {n: 0 for n in NAMES}
    for _, (_, table) in read_yolo(dst)["train"].items():
        for row in table:
            counts[NAMES[int(row[0])]] += 1
    assert counts["ellipse"] >= 6 and counts == r.plan.per_class_counts
    assert min(counts.values()) >= 6
    # only images with the rare class were copied to reach it; the rest kept their originals
    copies = {Path(row["source"]).stem for row in rows(dst) if row["kind"] == "augmented"}
    assert "train_03" in copies


def test_copies_per_image_reaches_the_target_with_the_fewest_copies_of_the_rare_class():
    from collections import Counter

    objects = {"a": Counter({0: 3}), "b": Counter({0: 1, 1: 1}), "c": Counter({1: 1})}
    copies, after = copies_per_image(objects, 5, seed=0)
    assert after[0] >= 5 and after[1] >= 5
    assert copies["a"] == 0  # class 0 is reached through the copies made for class 1
    assert copies_per_image(objects, 5, seed=0) == (copies, after)


# ============================================================================= COCO, VOC, masks


def test_coco_output_loads_in_pycocotools_with_new_unique_ids(tmp_path):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    built = coco_dataset(tmp_path / "src", splits={"train": 3, "val": 1}, keypoints=True, category_ids=(3, 7, 9))
    dst = tmp_path / "dst"
    r = augment(built.root, dst, FLIP, copies=2, workers=1, originals=True)
    assert r.exit_code == 0
    src_doc = json.loads((built.root / "annotations/instances_train.json").read_text())
    doc = json.loads((dst / "annotations/instances_train.json").read_text())
    assert doc["categories"] == src_doc["categories"]
    ids = [im["id"] for im in doc["images"]]
    assert len(ids) == len(set(ids)) == 4 * 3  # originals + 2 copies of the 4 images
    assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"])
    coco = COCO(str(dst / "annotations/instances_train.json"))
    for img in coco.loadImgs(coco.getImgIds()):
        assert (dst / "images/train" / img["file_name"]).is_file()
        pic = rgb(dst / "images/train" / img["file_name"])
        assert pic.shape[:2] == (img["height"], img["width"])
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            if "segmentation" in ann:
                m = coco.annToMask(ann).astype(bool)
                cls = [c["id"] for c in doc["categories"]].index(ann["category_id"])
                assert color_mask(pic, COLORS[cls])[m].mean() > 0.85  # the mask lies on its drawn object
            assert len(ann["keypoints"]) == 9
    assert (dst / "annotations/instances_val.json").exists()
    val = COCO(str(dst / "annotations/instances_val.json"))
    assert len(val.getImgIds()) == 1 and len(val.getAnnIds()) == 3


def test_voc_output_parses_and_marks_clipped_boxes_truncated(tmp_path):
    built = voc_dataset(tmp_path / "src", splits={"train": 4, "val": 1}, ext=".png")
    dst = tmp_path / "dst"
    r = augment(built.root, dst, SHIFT, copies=1, workers=1)
    assert r.exit_code == 0
    clipped = 0
    for row in rows(dst):
        if row["kind"] != "augmented":
            continue
        xml = dst / "Annotations" / (Path(row["output"]).stem + ".xml")
        root = ET.parse(xml).getroot()
        w, h = int(root.findtext("size/width")), int(root.findtext("size/height"))
        objs = root.findall("object")
        assert len(objs) == row["objects"]["kept"] + row["objects"]["clipped"]
        for o in objs:
            assert o.findtext("name") in NAMES
            b = [int(float(o.findtext(f"bndbox/{k}"))) for k in ("xmin", "ymin", "xmax", "ymax")]
            assert 1 <= b[0] <= b[2] <= w and 1 <= b[1] <= b[3] <= h
        clipped += sum(o.findtext("truncated") == "1" for o in objs)
    assert clipped >= 1
    assert (dst / "ImageSets/Main/val.txt").exists()


def test_masks_output_keeps_the_palette_and_moves_with_the_image(tmp_path):
    from PIL import Image

    built = masks_dataset(tmp_path / "src", splits={"train": 2, "val": 1})
    dst = tmp_path / "dst"
    r = augment(built.root, dst, FLIP, copies=1, workers=1)
    assert r.exit_code == 0
    for stem, scene in built.scenes["train"].items():
        m = Image.open(dst / f"masks/train/{stem}__aug0.png")
        assert m.mode == "P" and m.getpalette()[3:6] == list(COLORS[0])
        assert np.array_equal(np.asarray(m), scene.semantic()[:, ::-1])
    with pytest.raises(UsageError, match="mask dataset has none"):
        make_labelled_plan(built.root, tmp_path / "x", FLIP, LabelledOptions(per_class=3))


# ============================================================================= layout, options, the CLI


def test_link_puts_symlinks_for_the_splits_not_augmented(tmp_path):
    built = yolo_dataset(tmp_path / "src", splits={"train": 2, "val": 2})
    dst = tmp_path / "dst"
    r = augment(built.root, dst, FLIP, link=True, workers=1)
    assert r.exit_code == 0
    for stem in built.scenes["val"]:
        for rel in (f"images/val/{stem}.png", f"labels/val/{stem}.txt"):
            assert (dst / rel).is_symlink() and (dst / rel).resolve() == (built.root / rel).resolve()
    assert not (dst / "images/train/train_00__aug0.png").is_symlink()
    r = augment(built.root, dst, FLIP, link=True, workers=1)
    assert r.written == 0 and r.already_done == len(r.plan.items)


def test_augment_splits_and_unknown_split(tmp_path):
    built = yolo_dataset(tmp_path / "src", splits={"train": 2, "val": 1})
    plan = make_labelled_plan(built.root, tmp_path / "d", FLIP, LabelledOptions(augment_splits=["train", "val"]))
    assert {it.cls for it in plan.items if it.copy == 0} == {"train", "val"}
    with pytest.raises(UsageError, match="no split named 'tset'"):
        make_labelled_plan(built.root, tmp_path / "d", FLIP, LabelledOptions(augment_splits=["tset"]))


def test_a_labelled_folder_is_never_silently_augmented_as_classes(tmp_path):
    built = yolo_dataset(tmp_path / "src", splits={"train": 2, "val": 1})
    with pytest.raises(UsageError, match="looks like a yolo dataset"):
        make_plan(built.root, tmp_path / "d", FLIP, AugmentOptions())
    with pytest.raises(UsageError, match="looks like a yolo dataset"):
        plain_augment(built.root, tmp_path / "d", FLIP)
    assert augment_labelled(built.root, tmp_path / "api", FLIP, workers=1).exit_code == 0  # the labelled API
    assert (tmp_path / "api/data.yaml").exists()
    # the CLI detects it; --labels folders is the explicit way to treat its folders as classes
    out = runner.invoke(app, ["augment", str(built.root), str(tmp_path / "cli"), "--recipe", "light", "-n", "1"])
    assert out.exit_code == 0, out.output
    assert "yolo dataset: 4 images" in flat(out.output) and (tmp_path / "cli/data.yaml").exists()
    out = runner.invoke(app, ["augment", str(built.root), str(tmp_path / "cls"), "--labels", "folders"])
    assert out.exit_code == 0, out.output
    assert not (tmp_path / "cls/data.yaml").exists() and (tmp_path / "cls/images").is_dir()
    out = runner.invoke(app, ["augment", str(built.root), str(tmp_path / "v"), "--labels", "voc"])
    assert out.exit_code == 2 and "does not look like a voc dataset" in flat(out.output)
    out = runner.invoke(app, ["augment", str(built.root), str(tmp_path / "v"), "--labels", "yolov8"])
    assert out.exit_code == 2 and "allowed: yolo, coco, voc, masks, folders" in flat(out.output)


def test_cli_labelled_run_prints_object_totals_and_rejects_max_side(tmp_path):
    built = coco_dataset(tmp_path / "src", splits={"train": 2, "val": 1})
    out = runner.invoke(app, ["augment", str(built.root), str(tmp_path / "d"), "-r", "light", "--link"])
    assert out.exit_code == 0, out.output
    assert "objects" in out.output and "kept" in out.output and "val 1 linked" in flat(out.output)
    out = runner.invoke(app, ["augment", str(built.root), str(tmp_path / "e"), "--max-side", "50"])
    assert out.exit_code == 2 and "--max-side" in out.output
    out = runner.invoke(app, ["augment", "samples", str(tmp_path / "f"), "--link"])
    assert out.exit_code == 2 and "need a labelled dataset" in flat(out.output)


# ============================================================================= recipes export --labels


@pytest.mark.parametrize(("kind", "fmt"), [("yolo", "yolo"), ("coco", "coco"), ("voc", "pascal_voc"), ("masks", None)])
def test_export_writes_bbox_params_for_the_dataset_format(kind, fmt, tmp_path):
    import albumentations as A

    out = tmp_path / f"{kind}.json"
    res = runner.invoke(app, ["recipes", "export", "light", "-o", str(out), "--labels", kind])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["__augkit__"]["labels"] == kind
    if fmt is None:
        assert doc["transform"].get("bbox_params") is None
        return
    bp = doc["transform"]["bbox_params"]
    assert bp["format"] == fmt and bp["label_fields"] == ["class_labels"] and bp["clip"] is True
    assert bp["min_visibility"] == 0.1 and bp["min_area"] == 4.0  # the label rules' defaults
    assert bool(doc["transform"].get("keypoint_params")) == (kind != "voc")  # VOC has no keypoints
    pipe = A.load(str(out))
    box = {"yolo": [0.25, 0.5, 0.1, 0.2], "coco": [20, 30, 10, 12], "pascal_voc": [20, 30, 30, 42]}[fmt]
    res = pipe(image=np.zeros((60, 80, 3), np.uint8), bboxes=[box], class_labels=[1])
    assert len(res["bboxes"]) == 1 and list(res["class_labels"]) == [1]
    if kind != "voc":  # keypoints too, kept in order
        res = pipe(image=np.zeros((60, 80, 3), np.uint8), bboxes=[box], class_labels=[1], keypoints=[[5, 5], [9, 9]])
        assert len(res["keypoints"]) == 2


def test_export_takes_the_recipes_label_rules(tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text("name: r\nlabels: {min_visibility: 0.4, min_area: 9}\ntrain:\n  - flip: {p: 1}\n")
    out = tmp_path / "r.json"
    assert runner.invoke(app, ["recipes", "export", str(rec), "-o", str(out), "--labels", "voc"]).exit_code == 0
    bp = json.loads(out.read_text())["transform"]["bbox_params"]
    assert (bp["min_visibility"], bp["min_area"]) == (0.4, 9.0)
    res = runner.invoke(app, ["recipes", "export", str(rec), "-o", str(out), "--labels", "kitti"])
    assert res.exit_code == 2 and "allowed: yolo, coco, voc, masks" in flat(res.output)


def test_a_changed_image_is_made_again_and_the_rest_is_kept(tmp_path):
    built = yolo_dataset(tmp_path / "src", splits={"train": 3, "val": 1}, background=0)
    dst = tmp_path / "dst"
    augment(built.root, dst, FLIP, copies=1, workers=1)
    before = files(dst)
    img = built.root / "images/train/train_01.png"
    pic = cv2.imread(str(img))
    cv2.imwrite(str(img), 255 - pic)  # the same objects' places, other pixels
    r = augment(built.root, dst, FLIP, copies=1, workers=1)
    assert r.stale == ["images/train/train_01__aug0.png"] and r.written == 1
    after = files(dst)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed <= {"images/train/train_01__aug0.png", "manifest.jsonl", "errors.jsonl"}
    assert "images/train/train_01__aug0.png" in changed


def test_per_class_warns_about_a_class_without_objects(tmp_path):
    built = yolo_dataset(tmp_path / "src", splits={"train": 2, "val": 1}, background=0)
    for f in (built.root / "labels" / "train").glob("*.txt"):
        f.write_text("".join(r + "\n" for r in f.read_text().splitlines() if not r.startswith("2 ")))
    plan = make_labelled_plan(built.root, tmp_path / "d", FLIP, LabelledOptions(per_class=3))
    assert any("no object of ellipse in train" in w for w in plan.warnings)
    assert "ellipse" not in plan.per_class_counts and plan.per_class_counts["box"] >= 3


def test_the_training_split_is_found_by_its_name(tmp_path):
    built = coco_dataset(tmp_path / "src", splits={"train2017": 2, "val2017": 1})
    plan = make_labelled_plan(built.root, tmp_path / "d", FLIP, LabelledOptions())
    assert plan.split_modes == {"train2017": "augment", "val2017": "copy"}
    other = coco_dataset(tmp_path / "two", splits={"a": 1, "b": 1})
    with pytest.raises(UsageError, match="--augment-splits"):
        make_labelled_plan(other.root, tmp_path / "e", FLIP, LabelledOptions())


def test_a_huge_plan_is_refused_before_it_is_built(tmp_path):
    built = yolo_dataset(tmp_path / "src", splits={"train": 2, "val": 1})
    for kw in ({"copies": 10**9}, {"per_class": 10**9}):
        with pytest.raises(UsageError, match="one run may plan"):
            make_labelled_plan(built.root, tmp_path / "d", FLIP, LabelledOptions(**kw))


def test_non_ascii_names_in_a_labelled_dataset(tmp_path):
    built = yolo_dataset(tmp_path / "src", splits={"train": 2, "val": 1}, background=0)
    for d, ext in (("images", ".png"), ("labels", ".txt")):
        (built.root / d / "train" / f"train_00{ext}").rename(built.root / d / "train" / f"кот 😺 00{ext}")
    dst = tmp_path / "dst"
    r = augment(built.root, dst, FLIP, copies=1, workers=1)
    assert r.exit_code == 0 and r.written == 3
    ds = read_yolo(dst)
    assert len(ds["train"]["кот 😺 00__aug0.png"][1]) == 3


def test_sample_maker_names_only_folders_with_photos(tmp_path):
    """samples/make_labelled.py's class names are the folders holding photos: a __pycache__ (made when
    the script runs as ``python -m samples.make_labelled``) or an empty folder is not a class."""
    from samples.make_labelled import sample_photos

    src = Path(__file__).resolve().parents[1] / "samples"
    for name in ("cat", "coffee"):
        shutil.copytree(src / name, tmp_path / name)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "make_labelled.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "empty").mkdir()
    names, photos = sample_photos(tmp_path)
    assert names == ["cat", "coffee"]
    assert {c for c, _ in photos} == {0, 1}
