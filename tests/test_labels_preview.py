"""Labels drawn on images (augkit.labels.draw) and ``augkit preview`` on labelled datasets.

The drawings are checked by their pixels: a box's outline in its class colour along the box's edges,
a keypoint's dot in its index colour at the keypoint, a translucent fill inside a polygon and nowhere
else; and in the preview of a flipped dataset, the outline and the keypoint dots sit where the flip
moved the drawn objects (left and right keypoints swapped, as the dataset's flip_idx says).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _labelled import coco_dataset, masks_dataset, yolo_dataset
from typer.testing import CliRunner

from augkit.cli import app
from augkit.errors import UsageError
from augkit.labels.draw import KEYPOINT_COLORS, class_color, draw_labels, scale_labels
from augkit.labels.model import DatasetInfo, Labels, Obj
from augkit.offline import preview as preview_mod
from augkit.recipe.api import parse_recipe

runner = CliRunner()
FLIP = parse_recipe("name: hflip\ntrain:\n  - flip: {direction: horizontal, p: 1}\n", "<flip>")


def is_color(img: np.ndarray, color) -> np.ndarray:
    return np.all(img == np.array(color, np.uint8), axis=-1)


def test_box_outline_name_and_keypoints_are_drawn_where_the_labels_say():
    img = np.full((120, 160, 3), 128, np.uint8)
    kp = np.array([[30.5, 60.5, 2], [90.5, 60.5, 2], [60.5, 90.5, 0]])  # the third is not labelled
    obj = Obj(1, [20, 40, 100, 110], keypoints=kp)
    info = DatasetInfo("coco", Path("."), ["cat", "dog"], skeleton=[[1, 2], [2, 3]])
    out = draw_labels(img, Labels([obj]), info, thickness=1)
    c = class_color(1)
    left, right = is_color(out[50:100, 20], c), is_color(out[50:100, 99], c)
    assert left.mean() > 0.9 and right.mean() > 0.9  # outline on the box's pixel edges
    assert not is_color(out[50:100, 10], c).any() and not is_color(out[50:100, 110], c).any()
    for i, (x, y, _) in enumerate(kp[:2]):
        assert is_color(out[int(y), int(x)][None], KEYPOINT_COLORS[i]).all()
    assert not is_color(out, KEYPOINT_COLORS[2]).any()  # an unlabelled keypoint is not drawn
    assert (out[40:52, 20:60] != 128).any()  # the class name's tag at the box's top-left
    assert np.array_equal(img, np.full((120, 160, 3), 128, np.uint8))  # drawn on a copy


def test_polygon_and_semantic_overlays_are_translucent_and_only_inside():
    img = np.full((60, 80, 3), 200, np.uint8)
    tri = Obj(0, [10, 10, 50, 50], polygons=[[[10, 10], [50, 10], [10, 50]]])
    out = draw_labels(img, Labels([tri]), names=["t"], alpha=0.5, thickness=1)
    inside, outside = out[20, 20], out[45, 45]
    assert not np.array_equal(inside, img[20, 20]) and np.array_equal(outside, img[45, 45])
    assert np.all(np.abs(inside.astype(int) - (200 + np.array(class_color(0))) / 2) <= 1)  # 50 % blend
    sem = np.zeros((60, 80), np.uint8)
    sem[:, 40:] = 2
    sem[:5, :5] = 255  # the ignore value
    pal = np.zeros((256, 3), np.uint8)
    pal[2] = (255, 0, 0)
    out = draw_labels(img, Labels([], sem, pal), names=["bg", "a", "b"], alpha=0.5)
    assert np.array_equal(out[30, 20], img[30, 20])  # background untouched
    assert out[30, 60, 0] > out[30, 60, 1] + 50  # the palette's red for class 2
    assert (out[2, 2] < 150).all()  # ignore pixels darkened


def test_scale_labels_scales_coordinates_and_masks():
    sem = np.zeros((40, 60), np.uint8)
    sem[10:20, 30:60] = 1
    m = np.zeros((40, 60), bool)
    m[0:10, 0:10] = True
    lab = Labels([Obj(0, [0, 0, 10, 10], [[[0, 0], [10, 0], [0, 10]]], m, [[5, 5, 2]])], sem)
    s = scale_labels(lab, 0.5, 0.5, (30, 20))
    o = s.objects[0]
    assert np.allclose(o.box, [0, 0, 5, 5]) and np.allclose(o.keypoints[0], [2.5, 2.5, 2])
    assert o.mask.shape == (20, 30) and o.mask[:5, :5].all() and not o.mask[5:].any()
    assert s.semantic.shape == (20, 30) and s.semantic[5:10, 15:].all() and not s.semantic[:5].any()


@pytest.fixture
def captured(monkeypatch):
    """The preview's cells, as drawn, before the grid is laid out."""
    got: dict = {}
    real = preview_mod.render_grid

    def capture(rows, headers, labels, cell, captions=None):
        got.update(rows=rows, headers=headers, labels=labels, captions=captions)
        return real(rows, headers, labels, cell, captions=captions)

    monkeypatch.setattr(preview_mod, "render_grid", capture)
    return got


def test_preview_of_a_flipped_pose_dataset_draws_the_moved_labels(tmp_path, captured):
    built = yolo_dataset(tmp_path / "src", task="pose", splits={"train": 1, "val": 1}, background=0)
    out = preview_mod.preview(FLIP, [built.root], tmp_path / "p.png", images=1, versions=1, cell=96)
    assert out.exists()
    scene = built.scene("train_00")
    W = scene.size[0]
    original, flipped = captured["rows"][0]
    for shape in scene.shapes:
        x0, y0, x1, y1 = (int(v) for v in shape.box)
        c = class_color(shape.cls)
        mid = slice((y0 + y1) // 2, y1 - 2)  # the lower half: class-name tags sit at the top
        assert is_color(original[mid, x0], c).mean() > 0.8  # the box's left edge, on the original
        assert is_color(flipped[mid, W - x1], c).mean() > 0.8  # mirrored on the flipped tile
        # keypoint 0 (left_point) after the flip is the mirror of the right point (flip_idx [1, 0, 2])
        rx, ry = shape.keypoints[1, :2]
        assert is_color(flipped[int(ry), int(W - rx)][None], KEYPOINT_COLORS[0]).all()
    assert "objects" in captured["labels"][0]


def test_preview_extremes_and_masks_and_coco(tmp_path, captured):
    built = coco_dataset(tmp_path / "coco", splits={"train": 2, "val": 1})
    rec = parse_recipe("name: r\ntrain:\n  - rotate: {degrees: 30}\n  - color: {brightness: 0.3}\n", "<r>")
    preview_mod.preview(rec, [built.root], tmp_path / "e.png", images=2, extremes=True, cell=96)
    assert len(captured["rows"]) == 2 and len(captured["headers"]) == 1 + 2 + 2
    low, high = captured["rows"][0][1], captured["rows"][0][2]
    assert not np.array_equal(low, high)  # -30 and +30 degrees, labels drawn on each
    m = masks_dataset(tmp_path / "masks", splits={"train": 1, "val": 1})
    preview_mod.preview(FLIP, [m.root], tmp_path / "m.png", images=1, versions=2, cell=96)
    assert captured["labels"] == ["images/train/train_00.png"]
    with pytest.raises(UsageError, match="give one dataset folder"):
        preview_mod.preview(FLIP, [m.root, built.root], tmp_path / "x.png", labels="yolo")


def test_cli_preview_labelled_and_as_folders(tmp_path):
    built = yolo_dataset(tmp_path / "src", splits={"train": 2, "val": 1})
    out = runner.invoke(app, ["preview", str(built.root), "-o", str(tmp_path / "a.png"), "--versions", "2"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(
        app, ["preview", str(built.root), "-o", str(tmp_path / "b.png"), "--versions", "2", "--labels", "folders"]
    )
    assert out.exit_code == 0, out.output
    a, b = (tmp_path / "a.png").read_bytes(), (tmp_path / "b.png").read_bytes()
    assert a != b
    out = runner.invoke(app, ["preview", str(built.root), "-o", str(tmp_path / "c.png"), "--labels", "voc"])
    assert out.exit_code == 2 and "voc" in out.output
