"""``augkit labels check`` and :func:`augkit.labels.check.check_dataset`: every bad-label case
item 6, each reported with its file (and line), on tiny datasets from tests/_labelled.py that are spoilt in
one place each; a clean dataset has no problem; the command exits 3 / 0 / 2; nothing is lost (every image
is read or refused naming its file)."""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from _imgs import class_folder, photo, write
from _labelled import coco_dataset, masks_dataset, voc_dataset, yolo_dataset
from typer.testing import CliRunner

from augkit import cli
from augkit.errors import ImageError
from augkit.labels.check import LabelIssue, check_dataset
from augkit.labels.formats import FORMATS, REASONS, LabelError, open_dataset

runner = CliRunner()


def png_header(w: int, h: int) -> bytes:
    """A PNG that announces a w x h greyscale image and carries no pixels (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def set_line(path: Path, line: int, text: str) -> None:
    rows = path.read_text().splitlines()
    rows[line - 1] = text
    path.write_text("\n".join(rows) + "\n")


def edit_json(path: Path, fn: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc, indent=1))


def found(issues: list[LabelIssue], file: Path | str, reason: str, line: int | None = None) -> bool:
    return any(Path(i.file) == Path(file) and i.reason == reason and (line is None or i.line == line) for i in issues)


@pytest.mark.parametrize("builder", [yolo_dataset, coco_dataset, voc_dataset, masks_dataset])
def test_clean_datasets_have_no_problem(builder, tmp_path):
    assert check_dataset(builder(tmp_path / "d").root) == []


# ============================================================================= YOLO

YOLO_CASES = {
    # name: (edit of labels/train/train_00.txt or the dataset, reason, line)
    "class id beyond names": (lambda r, f: set_line(f, 2, "7 0.5 0.5 0.2 0.2"), "class id out of range", 2),
    "box out of range": (lambda r, f: set_line(f, 1, "0 1.5 0.5 0.2 0.2"), "coordinate out of range", 1),
    "negative coordinate": (lambda r, f: set_line(f, 3, "2 0.05 0.5 0.2 0.2"), "coordinate out of range", 3),
    "degenerate box": (lambda r, f: set_line(f, 2, "1 0.5 0.5 0 0.2"), "degenerate box", 2),
    "polygon under 3 points": (lambda r, f: set_line(f, 1, "0 0.5 0.5"), "polygon too short", 1),
    "odd value count": (lambda r, f: set_line(f, 1, "0 0.1 0.1 0.2 0.2 0.3"), "bad label line", 1),
    "not numbers": (lambda r, f: set_line(f, 3, "2 a b c d"), "bad label line", 3),
    "class not an integer": (lambda r, f: set_line(f, 3, "1.5 0.5 0.5 0.2 0.2"), "bad label line", 3),
    "nan": (lambda r, f: set_line(f, 1, "0 nan 0.5 0.2 0.2"), "coordinate out of range", 1),
}


@pytest.mark.parametrize("case", sorted(YOLO_CASES))
def test_yolo_bad_rows_are_reported_with_file_and_line(case, tmp_path):
    root = yolo_dataset(tmp_path / "y").root
    f = root / "labels" / "train" / "train_00.txt"
    edit, reason, line = YOLO_CASES[case]
    edit(root, f)
    issues = check_dataset(root)
    assert found(issues, f, reason, line), issues
    assert len(issues) == 1, issues  # the other rows and files are fine


def test_yolo_keypoint_count_other_than_kpt_shape(tmp_path):
    root = yolo_dataset(tmp_path / "y", task="pose").root
    f = root / "labels" / "train" / "train_01.txt"
    row = f.read_text().splitlines()[1].split()
    set_line(f, 2, " ".join(row[:-3]))  # one keypoint short
    issues = check_dataset(root)
    assert found(issues, f, "keypoint count", 2) and "kpt_shape is [3, 3]" in issues[0].detail


def test_yolo_orphan_label_file_and_missing_split(tmp_path):
    root = yolo_dataset(tmp_path / "y").root
    orphan = root / "labels" / "train" / "ghost.txt"
    orphan.write_text("0 0.5 0.5 0.1 0.1\n")
    (root / "data.yaml").write_text((root / "data.yaml").read_text() + "test: images/test\n")
    issues = check_dataset(root)
    assert found(issues, orphan, "orphan label file")
    assert any(i.reason == "missing image" and "images/test not found" in i.detail for i in issues)
    assert len(issues) == 2


def test_yolo_float_noise_is_not_a_problem(tmp_path):
    root = yolo_dataset(tmp_path / "y").root
    set_line(root / "labels" / "train" / "train_00.txt", 1, "0 0.9 0.5 0.2000001 0.4")  # right edge 1.00000005
    assert check_dataset(root) == []


# ============================================================================= COCO


def _ann(doc: dict, k: int) -> dict:
    return doc["annotations"][k]


COCO_CASES = {
    "image size differs from the file": (
        lambda d: d["images"][0].update(width=100),
        "image size mismatch",
    ),
    "duplicate image id": (lambda d: d["images"][1].update(id=d["images"][0]["id"]), "duplicate id"),
    "duplicate annotation id": (lambda d: _ann(d, 1).update(id=_ann(d, 0)["id"]), "duplicate id"),
    "duplicate file name": (lambda d: d["images"][1].update(file_name=d["images"][0]["file_name"]), "duplicate id"),
    "annotation of no image": (lambda d: _ann(d, 0).update(image_id=999), "unknown image id"),
    "unknown category": (lambda d: _ann(d, 0).update(category_id=42), "unknown class"),
    "polygon under 3 points": (lambda d: _ann(d, 0).update(segmentation=[[1, 1, 5, 5]]), "polygon too short"),
    "bbox out of range": (lambda d: _ann(d, 0).update(bbox=[90, 10, 20, 10]), "coordinate out of range"),
    "degenerate bbox": (lambda d: _ann(d, 0).update(bbox=[10, 10, 0, 10]), "degenerate box"),
    "keypoint count": (lambda d: _ann(d, 0).update(keypoints=[1, 1, 2, 2, 2, 2]), "keypoint count"),
    "rle of another size": (
        lambda d: _ann(d, 2).update(segmentation={"size": [10, 10], "counts": [100]}),
        "image size mismatch",
    ),
    "rle that does not add up": (
        lambda d: _ann(d, 2).update(segmentation={"size": [72, 96], "counts": [5, 5]}),
        "bad label line",
    ),
    "keypoint visibility": (lambda d: _ann(d, 0).update(keypoints=[1, 1, 7] * 3), "bad label line"),
}


@pytest.mark.parametrize("case", sorted(COCO_CASES))
def test_coco_bad_entries_are_reported_with_the_json(case, tmp_path):
    root = coco_dataset(tmp_path / "c", keypoints=True).root
    j = root / "annotations" / "instances_train.json"
    edit, reason = COCO_CASES[case]
    edit_json(j, edit)
    issues = check_dataset(root)
    assert found(issues, j, reason), issues


def test_coco_missing_and_orphan_images(tmp_path):
    root = coco_dataset(tmp_path / "c").root
    gone = root / "images" / "train" / "train_01.png"
    gone.unlink()
    extra = write(root / "images" / "train" / "extra.png", photo("coffee", (96, 72)))
    issues = check_dataset(root)
    assert found(issues, root / "annotations" / "instances_train.json", "missing image")
    assert found(issues, extra, "orphan image")
    assert len(issues) == 2


def test_coco_problem_names_the_image_and_annotation(tmp_path):
    root = coco_dataset(tmp_path / "c").root
    edit_json(root / "annotations" / "instances_train.json", lambda d: _ann(d, 4).update(category_id=42))
    (issue,) = check_dataset(root)
    assert "train_01.png, annotation 5" in issue.detail


# ============================================================================= VOC


def _object_line(xml: Path, k: int) -> int:
    lines = [n for n, t in enumerate(xml.read_text().splitlines(), 1) if "<object>" in t]
    return lines[k]


def _set_xml(xml: Path, old: str, new: str, count: int = 1) -> None:
    text = xml.read_text()
    assert old in text
    xml.write_text(text.replace(old, new, count))


def test_voc_bad_objects_with_lines(tmp_path):
    root = voc_dataset(tmp_path / "v").root
    (root / "classes.txt").write_text("box\ntriangle\n")  # the ellipse is now an unknown class
    a = root / "Annotations" / "train_00.xml"
    text = a.read_text()
    xmax = text.split("<xmax>")[1].split("<")[0]
    _set_xml(a, f"<xmax>{xmax}</xmax>", "<xmax>500</xmax>")  # first object: out of range
    b = root / "Annotations" / "train_01.xml"
    text = b.read_text()
    xmin, xmax = (text.split(f"<{t}>")[1].split("<")[0] for t in ("xmin", "xmax"))
    _set_xml(b, f"<xmax>{xmax}</xmax>", f"<xmax>{int(xmin) - 1}</xmax>")  # first object: xmax < xmin
    issues = check_dataset(root)
    assert found(issues, a, "coordinate out of range", _object_line(a, 0))
    assert found(issues, b, "degenerate box", _object_line(b, 0))
    for stem in ("train_00", "train_01", "train_02", "val_00"):
        x = root / "Annotations" / f"{stem}.xml"
        assert found(issues, x, "unknown class", _object_line(x, 2))
    assert len(issues) == 6


def test_voc_missing_orphan_size_and_broken_xml(tmp_path):
    root = voc_dataset(tmp_path / "v").root
    (root / "Annotations" / "train_01.xml").unlink()
    orphan = root / "Annotations" / "ghost.xml"
    shutil.copyfile(root / "Annotations" / "train_00.xml", orphan)
    _set_xml(root / "Annotations" / "train_02.xml", "<width>96</width>", "<width>100</width>")
    broken = root / "Annotations" / "val_00.xml"
    broken.write_text("<annotation>\n  <object>\n</annotation>\n")
    issues = check_dataset(root)
    assert found(issues, root / "JPEGImages" / "train_01.jpg", "missing label file")
    assert found(issues, orphan, "orphan label file")
    assert found(issues, root / "Annotations" / "train_02.xml", "image size mismatch")
    assert found(issues, broken, "unreadable label file", 3)
    assert len(issues) == 4


# ============================================================================= masks


def test_mask_problems(tmp_path):
    from PIL import Image

    root = masks_dataset(tmp_path / "m", splits={"train": 5}).root
    m = root / "masks" / "train"
    (m / "train_00.png").unlink()
    orphan = m / "ghost.png"
    shutil.copyfile(m / "train_01.png", orphan)
    Image.open(m / "train_01.png").resize((50, 40)).save(m / "train_01.png")
    arr = np.array(Image.open(m / "train_02.png"))
    arr[0, 0] = 9  # names: background + 3 classes
    Image.fromarray(arr).save(m / "train_02.png")
    ok, buf = cv2.imencode(".png", np.zeros((72, 96, 3), np.uint8))
    (m / "train_03.png").write_bytes(buf.tobytes())  # an RGB picture, not class indices
    issues = check_dataset(root)
    assert found(issues, root / "images" / "train" / "train_00.png", "missing label file")
    assert found(issues, orphan, "orphan label file")
    assert found(issues, m / "train_01.png", "image size mismatch")
    assert found(issues, m / "train_02.png", "class id out of range")
    assert found(issues, m / "train_03.png", "unreadable label file")
    assert "class-index" in next(i.detail for i in issues if i.file.endswith("train_03.png"))
    assert len(issues) == 5


# ============================================================================= nothing lost, CLI


def test_every_image_is_read_or_refused_naming_its_file(tmp_path):
    """What augment does per image: read() gives labels or raises an ImageError naming the file; the counts
    add up, and the refused ones are exactly the images check lists."""
    root = yolo_dataset(tmp_path / "y", splits={"train": 4, "val": 2}).root
    set_line(root / "labels" / "train" / "train_01.txt", 2, "9 0.5 0.5 0.1 0.1")
    set_line(root / "labels" / "val" / "val_01.txt", 1, "0 0.5")
    (root / "images" / "train" / "train_03.png").write_bytes(b"not a png")
    info = open_dataset(root)
    fmt = FORMATS["yolo"]
    ok, refused = [], {}
    for it in info.items:
        try:
            fmt.read(info, it)
            ok.append(it)
        except ImageError as exc:
            refused[it.image.stem] = exc
    assert len(ok) + len(refused) == len(info.items) == 7
    assert sorted(refused) == ["train_01", "train_03", "val_01"]
    assert isinstance(refused["train_01"], LabelError) and refused["train_01"].line == 2
    assert refused["train_03"].reason == "not an image"
    flagged = {Path(i.file).stem for i in check_dataset(root)}
    assert flagged == set(refused)


def test_every_reason_is_documented(tmp_path):
    """The reasons the cases above produce are the documented ones (REASONS), plus image header errors."""
    root = yolo_dataset(tmp_path / "y").root
    set_line(root / "labels" / "train" / "train_00.txt", 1, "5 0.5 0.5 0.2 0.2")
    assert all(i.reason in REASONS for i in check_dataset(root))


def test_cli_exit_codes_and_output(tmp_path):
    root = yolo_dataset(tmp_path / "y").root
    res = runner.invoke(cli.app, ["labels", "check", str(root)])
    assert res.exit_code == 0 and res.stdout == "" and "no problems found" in res.output
    f = root / "labels" / "train" / "train_00.txt"
    set_line(f, 2, "7 0.5 0.5 0.2 0.2")
    (root / "labels" / "train" / "ghost.txt").write_text("")
    res = runner.invoke(cli.app, ["labels", "check", str(root)])
    assert res.exit_code == 3, res.output
    assert f"{f}:2: class id out of range (class 7; names has 3 (0..2))" in res.stdout
    assert "ghost.txt: orphan label file" in res.stdout
    assert "2 problem(s)" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli.app, ["labels", "check", str(root), "--json"])
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert res.exit_code == 3 and {r["reason"] for r in rows} == {"class id out of range", "orphan label file"}
    assert next(r for r in rows if r["reason"] == "class id out of range")["line"] == 2


def test_cli_refuses_what_is_not_a_labelled_dataset(tmp_path):
    res = runner.invoke(cli.app, ["labels", "check", str(class_folder(tmp_path / "cls"))])
    assert res.exit_code == 2 and "does not look like a labelled dataset" in res.output
    root = voc_dataset(tmp_path / "v").root
    res = runner.invoke(cli.app, ["labels", "check", str(root), "--labels", "yolo"])
    assert res.exit_code == 2 and "does not look like a yolo dataset" in res.output
    res = runner.invoke(cli.app, ["labels", "check", str(root), "--labels", "voc"])
    assert res.exit_code == 0, res.output


def test_hostile_values_are_reported_not_raised(tmp_path):
    """Ids that are lists, a class of inf, a huge mask header: each a reported problem, never a traceback."""
    root = coco_dataset(tmp_path / "c").root
    j = root / "annotations" / "instances_train.json"

    def spoil(d: dict) -> None:
        d["annotations"][0]["id"] = [1, 2]
        d["annotations"][1]["image_id"] = {"x": 1}
        d["annotations"][2]["category_id"] = [3]
        d["images"][1]["id"] = "two"

    edit_json(j, spoil)
    reasons = {i.reason for i in check_dataset(root)}
    assert {"unknown image id", "unknown class", "bad label line"} <= reasons
    y = yolo_dataset(tmp_path / "y").root
    (y / "data.yaml").write_text("train: images/train\nval: images/val\n")  # no names: from the class ids
    set_line(y / "labels" / "train" / "train_00.txt", 1, "inf 0.5 0.5 0.1 0.1")
    (issue,) = check_dataset(y)
    assert issue.reason == "bad label line" and issue.line == 1
    m = masks_dataset(tmp_path / "m", splits={"train": 1}).root
    (m / "masks" / "train" / "train_00.png").write_bytes(png_header(20_000, 10_000))  # 200 Mpx said, none sent
    issues = check_dataset(m)
    assert any(i.reason == "unreadable label file" and "too large" in i.detail for i in issues)


def test_yolo_split_with_one_missing_folder_of_two(tmp_path):
    root = yolo_dataset(tmp_path / "y").root
    (root / "data.yaml").write_text("train: [images/train, images/extra]\nval: images/val\nnames: [a, b, c]\n")
    (issue,) = check_dataset(root)
    assert issue.reason == "missing image" and issue.detail == "train: images/extra not found"
    assert issue.file == str(root / "data.yaml")
