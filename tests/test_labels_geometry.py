"""Labels move with the pixels: checked by rendering, not by trusting the code.

Each scene is a real photo (scikit-image, squashed to mid-grey levels so that no photo pixel looks like
a drawn colour) with three objects drawn on it in pure colours: rectangles, a triangle and an ellipse
(tests/_labelled.py), and for pose scenes three keypoint dots per object. Every geometric op (augkit's
and the geometric ops of trivial_augment/rand_augment, at both ends of their ranges, and a set of
albumentations pass-through transforms) runs on image + labels; then each object is found again *in the
output image* by its colour, and its label must lie on it: box IoU >= 0.9 for objects wholly inside the
frame, mask IoU >= 0.95, keypoints within 1.5 px of their dot. An object that left the frame has no label;
a visible one keeps its label. Pixel-only ops leave every label exactly as it was.
"""

from __future__ import annotations

import copy
import functools
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import numpy as np
import pytest
from _imgs import photo
from _labelled import FLIP_IDX, KPT_COLORS, KPT_NAMES, NAMES, make_scene
from typer.testing import CliRunner

from augkit import cli
from augkit.errors import RecipeError, UsageError
from augkit.labels.geometry import (
    LabelStats,
    build_labelled,
    check_labelled,
    clip_polygon,
    flip_index,
    kinds_of_format,
    label_kinds,
    label_warnings,
    polygon_area,
)
from augkit.labels.model import DatasetInfo, Labels, Obj
from augkit.recipe.api import Recipe, parse_recipe, step_extremes
from augkit.recipe.labelspec import LabelSpec
from augkit.recipe.policies.functional import OP_NAMES, apply_op
from augkit.recipe.policies.transform import GEOMETRIC_OPS, inverse_matrix

SIZE = (192, 144)  # width, height of the drawn scene: objects 40-60 px wide, one pixel of edge is a few % of a box
PAD = (48, 36)  # the scene sits in the middle of a photo this much larger on each side, so most objects stay in view
#: the colour object k is painted in (whatever its class), and the tolerance that finds it again
OBJ_COLORS = [(255, 0, 255), (0, 255, 255), (0, 255, 0)]
TOL = 50
CONFIGS = ("boxes", "polygons", "masks", "semantic")


# ============================================================================= scenes and labels


def scene(index: int = 0, config: str = "polygons", keypoints: bool = False):
    """(image, labels, shapes): a squashed photo with three drawn objects; ``config`` says which label
    kind the objects carry. "boxes" scenes hold three rectangles (a box label is exact only for them)."""
    return copy.deepcopy(_scene(index, config, keypoints))


@functools.cache
def _scene(index: int, config: str, keypoints: bool, size=SIZE, pad=PAD):
    classes = (0, 0, 0) if config == "boxes" else (0, 1, 2)
    sc = make_scene(f"s{index}", index, size=size, classes=classes, keypoints=keypoints, seed=index)
    px, py = pad
    full = (size[0] + 2 * px, size[1] + 2 * py)
    base = photo(("chelsea", "coffee", "astronaut", "rocket")[index % 4], full, offset=index)
    img = (90 + base.astype(np.float32) * (70 / 255)).astype(np.uint8)  # levels 90-160: no pure colour
    for s in sc.shapes:  # move each shape into the middle of the larger photo
        s.mask = np.pad(s.mask, ((py, py), (px, px)))
        s.box = s.box + [px, py, px, py]
        s.polygon = s.polygon + [px, py]
        if keypoints:
            s.keypoints = s.keypoints + [px, py, 0]
    for k, s in enumerate(sc.shapes):
        img[s.mask] = OBJ_COLORS[k]
        s.color = OBJ_COLORS[k]
    if keypoints:
        for s in sc.shapes:
            for (x, y, _), color in zip(s.keypoints, KPT_COLORS, strict=True):
                i, j = int(x), int(y)
                img[j - 1 : j + 2, i - 1 : i + 2] = color
    objs = []
    for k, s in enumerate(sc.shapes):
        o = Obj(s.cls, s.box, attrs={"k": k})
        if config == "polygons":
            o.polygons = [s.polygon.copy()]
        if config == "masks":
            o.mask = s.mask.copy()
        if keypoints:
            o.keypoints = s.keypoints.copy()
        objs.append(o)
    if config == "semantic":
        sem = np.zeros(img.shape[:2], np.uint8)
        for k, s in enumerate(sc.shapes):
            sem[s.mask] = k + 1
        return img, Labels(semantic=sem), sc.shapes
    return img, Labels(objs), sc.shapes


def info_for(config: str, keypoints: bool = False) -> DatasetInfo:
    kind = {"boxes": "voc", "polygons": "yolo", "masks": "coco", "semantic": "masks"}[config]
    return DatasetInfo(
        kind,
        None,
        list(NAMES),
        kpt_shape=(3, 3) if keypoints else None,
        flip_idx=list(FLIP_IDX) if keypoints else None,
        keypoint_names=list(KPT_NAMES) if keypoints else None,
    )


def one_step(step, labels: LabelSpec | None = None) -> Recipe:
    return Recipe(name="t", description="", train=[step], tta=None, labels=labels)


def color_mask(image: np.ndarray, color, tol: int) -> np.ndarray:
    """Pixels within ``tol`` of ``color`` in every channel: where a drawn object (or dot) is."""
    c = np.array(color, np.int16)
    return cv2.inRange(image, np.clip(c - tol, 0, 255).astype(np.uint8), np.clip(c + tol, 0, 255).astype(np.uint8)) > 0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mask_iou(a: np.ndarray, b: np.ndarray, unsure: np.ndarray | None = None) -> float:
    """IoU of two masks, leaving out ``unsure`` pixels (edge pixels the object covers only partly)."""
    if unsure is not None:
        a, b = a & ~unsure, b & ~unsure
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def edge_band(img: np.ndarray, color) -> np.ndarray:
    """Pixels that are partly the object's colour: interpolation blended them with the background."""
    return color_mask(img, color, 130) & ~color_mask(img, color, TOL)


def region_box(region: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(region)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def dots(img: np.ndarray, color) -> np.ndarray:
    """Centres (pixel-edge coordinates) of the dots of one colour in ``img``."""
    n, _, stats, cents = cv2.connectedComponentsWithStats(color_mask(img, color, TOL).astype(np.uint8))
    return np.array([c + 0.5 for c, st in zip(cents[1:], stats[1:]) if st[cv2.CC_STAT_AREA] >= 1]).reshape(-1, 2)


# ============================================================================= the check


def check_output(img, out: Labels, shapes, config: str, keypoints: bool, stats: LabelStats, what: str, mirrored=False):
    """Each object found in ``img`` by its colour against ``out``; returns how many were checked inside.
    After a mirror, keypoint j sits on the dot drawn for its mirror image (``FLIP_IDX``)."""
    H, W = img.shape[:2]
    checked = 0
    if config == "semantic":
        assert out.semantic is not None and out.semantic.shape == (H, W), what
        for k in range(len(shapes)):
            region = color_mask(img, OBJ_COLORS[k], TOL)
            if region.sum() >= 50:
                got = mask_iou(out.semantic == k + 1, region, edge_band(img, OBJ_COLORS[k]))
                assert got >= 0.95, f"{what}: object {k} mask IoU {got:.3f}"
                checked += 1
            else:
                assert (out.semantic == k + 1).sum() <= 10, f"{what}: object {k} left, its mask stayed"
        return checked
    by_k = {o.attrs["k"]: o for o in out.objects}
    assert len(by_k) == len(out.objects)
    assert stats.kept + stats.clipped + stats.dropped == len(shapes), what
    for k, s in enumerate(shapes):
        region = color_mask(img, OBJ_COLORS[k], TOL)
        if keypoints:  # the dots sit on the object: count them as part of it
            for c in KPT_COLORS:
                near = cv2.dilate(region.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
                region |= color_mask(img, c, TOL) & near
        count = int(region.sum())
        o = by_k.get(k)
        if count == 0:
            assert o is None, f"{what}: object {k} left the frame but kept its label {o.box}"
            continue
        if o is None:
            assert count < 0.3 * s.mask.sum(), f"{what}: object {k} is visible ({count} px) but lost its label"
            continue
        b = o.box
        assert 0 <= b[0] < b[2] <= W and 0 <= b[1] < b[3] <= H, f"{what}: box {b} outside {W}x{H}"
        inside = not (region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any())
        drawn = region_box(region)
        if (inside or config != "boxes") and count >= 50:  # a clipped box from 4 corners is not exact
            got = iou(b, drawn)
            assert got >= 0.9, f"{what}: object {k} box {np.round(b, 1)} vs drawn {drawn}: IoU {got:.3f}"
            checked += 1
        else:  # the box of a clipped quad holds what is left of the object
            assert np.all(b[:2] <= drawn[:2] + 1.5) and np.all(b[2:] >= drawn[2:] - 1.5), f"{what}: object {k}"
        if config == "masks":
            assert o.mask is not None and o.mask.shape == (H, W)
            if count >= 50:
                got = mask_iou(o.mask, region, edge_band(img, OBJ_COLORS[k]))
                assert got >= 0.95, f"{what}: object {k} mask IoU {got:.3f}"
        if config == "polygons" and inside and count >= 50:
            assert len(o.polygons) == 1
            pts = [np.round((o.polygons[0] - 0.5) * 16).astype(np.int32)]
            drawn, outline = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
            cv2.fillPoly(drawn, pts, 1, cv2.LINE_8, 4)
            cv2.polylines(outline, pts, True, 1, 2, cv2.LINE_8, 4)  # pixels on the outline: either side is right
            got = mask_iou(drawn.astype(bool), region, edge_band(img, OBJ_COLORS[k]) | outline.astype(bool))
            assert got >= 0.95, f"{what}: object {k} polygon IoU {got:.3f}"
        if keypoints:
            assert o.keypoints is not None and o.keypoints.shape == (3, 3), "counts stay fixed"
            for j, (x, y, v) in enumerate(o.keypoints):
                if v == 0:
                    assert x == 0 and y == 0
                    continue
                assert 0 <= x <= W and 0 <= y <= H
                found = dots(img, KPT_COLORS[FLIP_IDX[j] if mirrored else j])
                dist = np.hypot(*(found - [x, y]).T).min() if len(found) else np.inf
                assert dist <= 1.5, (
                    f"{what}: object {k} keypoint {KPT_NAMES[j]} ({x:.1f}, {y:.1f}) is {dist:.2f} px off"
                )
    return checked


# ============================================================================= the ops


def _geometric_steps() -> list[tuple[str, object]]:
    r = parse_recipe(
        """
train:
  - flip: {direction: horizontal}
  - flip: {direction: vertical}
  - shift: {x: [-0.4, 0.4], y: [-0.35, 0.35]}
  - rotate: {degrees: [-40, 40]}
  - affine: {scale: [0.85, 1.15], shear: [-12, 12], translate: [-0.1, 0.1], rotate: [-25, 25]}
  - trivial_augment: {}
  - rand_augment: {n: 1, m: 30}
  - albumentations: {transform: Perspective, scale: [0.05, 0.1], p: 1}
  - albumentations: {transform: Transpose, p: 1}
  - albumentations: {transform: RandomRotate90, p: 1}
  - albumentations: {transform: D4, p: 1}
  - albumentations: {transform: RandomResizedCrop, size: [144, 192], scale: [0.5, 1.0], p: 1}
  - albumentations: {transform: CropAndPad, px: [-12, 12], p: 1}
  - albumentations: {transform: SafeRotate, limit: 30, p: 1}
  - albumentations: {transform: HorizontalFlip, p: 1}
  - albumentations: {transform: VerticalFlip, p: 1}
  - albumentations: {transform: Affine, rotate: [-20, 20], shear: [-10, 10], fit_output: true, p: 1}
  - albumentations: {transform: Rotate, limit: [-30, 30], crop_border: true, p: 1}
  - albumentations: {transform: SquareSymmetry, p: 1}
  - albumentations: {transform: Crop, x_min: 10, y_min: 5, x_max: 250, y_max: 200, p: 1}
  - albumentations: {transform: CenterCrop, height: 150, width: 200, p: 1}
  - albumentations: {transform: RandomCrop, height: 150, width: 200, p: 1}
  - albumentations: {transform: RandomSizedCrop, min_max_height: [170, 210], size: [216, 288], p: 1}
  - albumentations: {transform: RandomCropFromBorders, p: 1}
  - albumentations: {transform: Pad, padding: [10, 20, 30, 5], p: 1}
  - albumentations: {transform: PadIfNeeded, min_height: 300, min_width: 300, p: 1}
  - albumentations: {transform: Resize, height: 300, width: 250, p: 1}
  - albumentations: {transform: RandomScale, scale_limit: [-0.3, 0.3], p: 1}
  - albumentations: {transform: LongestMaxSize, max_size: 400, p: 1}
  - albumentations: {transform: SmallestMaxSize, max_size: 150, p: 1}
"""
    )
    out = []
    for step in r.train:
        for label, s in step_extremes(step):
            if step.op in ("trivial_augment", "rand_augment") and s.params["only"][0] not in GEOMETRIC_OPS:
                continue
            out.append((label, s))
    return out


GEOMETRIC = _geometric_steps()
MIRRORS = {"flip horizontal", "flip vertical", "Transpose", "HorizontalFlip", "VerticalFlip"}


def test_every_geometric_policy_op_is_covered():
    labels = {label for label, _ in GEOMETRIC}
    for policy in ("trivial_augment", "rand_augment"):
        for name in GEOMETRIC_OPS:
            assert sum(lab.startswith(f"{policy} {name} ") for lab in labels) == 2, (policy, name)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("label,step", GEOMETRIC, ids=[label for label, _ in GEOMETRIC])
def test_labels_lie_on_their_objects(label, step, config):
    keypoints = config == "polygons"
    pipe = build_labelled(one_step(step), info_for(config, keypoints))
    checked = 0
    for index, seed in ((0, 1), (1, 2), (2, 3)):
        img, labels, shapes = scene(index, config, keypoints)
        out_img, out, stats, applied = pipe(img, labels, seed)
        mirrored = label in MIRRORS or _mirrored(applied)
        what = f"{label} [{config}] image {index}"
        checked += check_output(out_img, out, shapes, config, keypoints, stats, what, mirrored)
    assert checked >= 1 or config == "boxes", f"{label}: no object stayed inside the frame to check"


def _mirrored(applied: list[dict]) -> bool:
    """Whether an applied D4/RandomRotate90/Transpose step mirrored the image (from its sampled params)."""
    for a in applied:
        group = a["params"].get("group_element")
        if group is not None:
            return group in ("v", "hvt", "h", "t")
    return False


def test_flip_swaps_left_and_right_keypoints():
    img, labels, shapes = scene(0, "polygons", keypoints=True)
    pipe = build_labelled(parse_recipe("train: [{flip: {direction: horizontal}}]"), info_for("polygons", True))
    _, out, _, _ = pipe(img, labels, 0)
    for o in out.objects:
        left, right = o.keypoints[0], o.keypoints[1]
        assert left[0] < right[0], "left_point must stay the left one after a mirror (flip_idx)"
    # without flip_idx nor names nothing swaps: the left point is then on the right
    bare = DatasetInfo("yolo", None, list(NAMES), kpt_shape=(3, 3))
    _, out, _, _ = build_labelled(parse_recipe("train: [{flip: {direction: horizontal}}]"), bare)(img, labels, 0)
    assert all(o.keypoints[0][0] > o.keypoints[1][0] for o in out.objects)


def test_coco_names_give_the_flip_index():
    info = DatasetInfo(
        "coco", None, ["person"], keypoint_names=["nose", "left_eye", "right_eye", "left_hip", "right_hip"]
    )
    assert flip_index(info, 5) == [0, 2, 1, 4, 3]
    assert flip_index(DatasetInfo("coco", None, ["x"], keypoint_names=["a", "b"]), 2) is None
    assert flip_index(DatasetInfo("yolo", None, ["x"], flip_idx=[1, 0, 2]), 3) == [1, 0, 2]


def test_object_that_leaves_the_frame_loses_its_label_and_is_counted():
    img, labels, shapes = scene(0, "polygons")
    r = parse_recipe("train: [{shift: {x: [0.75, 0.75], y: 0}}]")
    out_img, out, stats, _ = build_labelled(r, info_for("polygons"))(img, labels, 0)
    assert stats.dropped >= 1 and stats.reasons().get("outside", 0) >= 1
    assert stats.to_record()["dropped"] == stats.dropped
    check_output(out_img, out, shapes, "polygons", False, stats, "shift 0.75")
    assert any(o.fate == "clipped" for o in stats.objects) or stats.kept >= 1


def test_min_visibility_and_min_area_drop_objects():
    img, labels, shapes = scene(0, "boxes")
    text = "train: [{shift: {x: [0.55, 0.55], y: 0}}]\nlabels: {min_visibility: %s, min_area: %s}\n"
    _, out_loose, st_loose, _ = build_labelled(parse_recipe(text % (0.0, 0)), info_for("boxes"))(img, labels, 0)
    _, out_strict, st_strict, _ = build_labelled(parse_recipe(text % (0.9, 0)), info_for("boxes"))(img, labels, 0)
    assert st_strict.reasons().get("min_visibility", 0) >= 1
    assert len(out_strict.objects) < len(out_loose.objects)
    _, out_area, st_area, _ = build_labelled(parse_recipe(text % (0.0, 100000)), info_for("boxes"))(img, labels, 0)
    assert out_area.objects == [] and st_area.reasons().get("min_area", 0) >= 1


def test_voc_clipped_box_is_truncated():
    img, labels, _ = scene(0, "boxes")
    r = parse_recipe("train: [{shift: {x: [0.25, 0.25], y: 0}}]\nlabels: {min_visibility: 0}\n")
    _, out, stats, _ = build_labelled(r, info_for("boxes"))(img, labels, 0)
    clipped = [f.index for f in stats.objects if f.fate == "clipped"]
    assert clipped
    for o in out.objects:
        assert o.attrs.get("truncated", 0) == (1 if o.attrs["k"] in clipped else 0)


def test_rotated_rectangle_box_is_tight_from_polygon_and_loose_from_corners():
    img, labels, shapes = scene(1, "polygons")
    r = "train: [{rotate: {degrees: [40, 40]}}]\nlabels: {box_from: %s}\n"
    _, auto, _, _ = build_labelled(parse_recipe(r % "auto"), info_for("polygons"))(img, labels, 0)
    _, corners, _, _ = build_labelled(parse_recipe(r % "corners"), info_for("polygons"))(img, labels, 0)
    ellipse_auto = next(o for o in auto.objects if o.cls == 2).box
    ellipse_corners = next(o for o in corners.objects if o.cls == 2).box
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    assert area(ellipse_corners) > 1.2 * area(ellipse_auto)  # the corners of a rotated box overshoot an ellipse


# ============================================================================= pixel-only ops


def _pixel_steps():
    r = parse_recipe(
        """
train:
  - color: {brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.1}
  - linear: {a: [0.5, 1.5], b: [-40, 40]}
  - trivial_augment: {}
  - rand_augment: {n: 1, m: 30}
  - albumentations: {transform: GaussianBlur, blur_limit: [3, 7], p: 1}
  - albumentations: {transform: CoarseDropout, p: 1}
  - albumentations: {transform: Erasing, p: 1}
  - albumentations: {transform: GridDropout, p: 1}
  - albumentations: {transform: PixelDropout, p: 1}
  - albumentations: {transform: XYMasking, num_masks_x: 2, mask_x_length: 10, p: 1}
  - albumentations: {transform: NoOp, p: 1}
"""
    )
    out = []
    for step in r.train:
        for label, s in step_extremes(step):
            if step.op in ("trivial_augment", "rand_augment") and s.params["only"][0] in GEOMETRIC_OPS:
                continue
            out.append((label, s))
    return out


PIXEL = _pixel_steps()


def test_every_policy_op_is_covered():
    names = {lab.split()[1] for lab, _ in GEOMETRIC + PIXEL if lab.split()[0] in ("trivial_augment", "rand_augment")}
    assert names == set(OP_NAMES)


@pytest.mark.parametrize("label,step", PIXEL, ids=[label for label, _ in PIXEL])
def test_pixel_only_ops_leave_labels_exactly(label, step):
    img, labels, shapes = scene(2, "polygons", keypoints=True)
    pipe = build_labelled(one_step(step), info_for("polygons", True))
    out_img, out, stats, _ = pipe(img, labels, 5)
    assert out_img.shape == img.shape
    # Identity, NoOp, 8-bit posterize and autocontrast of an image that already spans 0-255 change nothing
    if not any(x in label for x in ("Identity", "NoOp", "Posterize 8", "AutoContrast")):
        assert not np.array_equal(out_img, img), f"{label} did not change the pixels"
    assert stats.kept == 3 and stats.dropped == 0
    for a, b in zip(labels.objects, out.objects, strict=True):
        np.testing.assert_allclose(b.box, a.box, atol=1e-3)
        np.testing.assert_allclose(b.polygons[0], a.polygons[0], atol=1e-3)
        np.testing.assert_allclose(b.keypoints, a.keypoints, atol=1e-3)
    img, sem_labels, _ = scene(2, "semantic")
    out_img, out, _, _ = build_labelled(one_step(step), info_for("semantic"))(img, sem_labels, 5)
    assert np.array_equal(out.semantic, sem_labels.semantic)


def test_every_albumentations_transform_that_moves_pixels_is_tested_or_refused():
    """A new albumentations transform fails here until it is tested above or refused on labelled data."""
    import albumentations as A

    from augkit.recipe.passthrough import albumentations_transforms

    tested = {s.params["transform"] for _, s in GEOMETRIC + PIXEL if s.op == "albumentations"}
    args = {  # what the refused ones need to be built at all
        "AtLeastOneBBoxRandomCrop": "height: 100, width: 100",
        "RandomSizedBBoxSafeCrop": "height: 100, width: 100",
        "CropNonEmptyMaskIfExists": "height: 100, width: 100",
        "CenterCrop3D": "size: [2, 100, 100]",
        "RandomCrop3D": "size: [2, 100, 100]",
        "Pad3D": "padding: 2",
        "PadIfNeeded3D": "min_zyx: [2, 100, 100]",
        "GridElasticDeform": "num_grid_xy: [4, 4], magnitude: 5",
    }
    for name in albumentations_transforms():
        if issubclass(getattr(A, name), A.ImageOnlyTransform) or name in tested:
            continue
        try:
            recipe = parse_recipe(f"train: [{{albumentations: {{transform: {name}, {args.get(name, '')}}}}}]")
        except RecipeError as exc:  # refused as a step at all, or needs arguments: then it must be tested
            assert "validation error" not in str(exc), f"{name} needs arguments: test it with some"
            continue
        with pytest.raises(RecipeError, match="cannot move"):
            check_labelled(recipe, ("boxes", "polygons", "keypoints"))


# ============================================================================= the policy kernels' matrices


@pytest.mark.parametrize("name", GEOMETRIC_OPS)
@pytest.mark.parametrize("magnitude", [-0.7, 0.3, 17.0, -25.0])
def test_policy_matrix_is_the_kernels(name, magnitude):
    img = photo("astronaut", (61, 47))
    inv = inverse_matrix(name, magnitude, 47, 61)
    ours = cv2.warpAffine(img, inv, (61, 47), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
    assert np.array_equal(ours, apply_op(img, name, magnitude))
    assert inverse_matrix("Brightness", magnitude, 47, 61) is None


# ============================================================================= seeds, edge cases


def test_same_seed_same_labels_any_pipeline():
    img, labels, _ = scene(3, "masks", keypoints=True)
    recipe = parse_recipe(
        "train:\n  - flip: {p: 0.5}\n  - affine: {scale: [0.8, 1.2], rotate: 30, translate: 0.2, p: 0.9}\n"
        "  - trivial_augment: {}\n  - color: {brightness: 0.3}\n"
    )
    a = build_labelled(recipe, info_for("masks", True))
    b = build_labelled(recipe, info_for("masks", True))
    results = []
    for seed in (7, 7, 8):
        for pipe in (a, b):
            img_o, out, stats, applied = pipe(img, labels, seed)
            results.append((img_o, [(o.box, o.mask, o.keypoints) for o in out.objects], stats.to_record(), applied))

    def same(x, y):
        if x[2] != y[2] or x[3] != y[3] or not np.array_equal(x[0], y[0]) or len(x[1]) != len(y[1]):
            return False
        return all(all(np.array_equal(p, q) for p, q in zip(o, r)) for o, r in zip(x[1], y[1]))

    assert all(same(results[0], r) for r in results[1:4])
    assert not all(same(results[0], r) for r in results[4:])


@pytest.mark.parametrize(
    "step", ["rotate: {degrees: 45}", "shift: {x: 0.3, y: 0.3}", "trivial_augment: {}", "flip: {direction: both}"]
)
def test_float_edge_cases_never_crash(step):
    W, H = 40, 30
    img = photo("coffee", (W, H))
    objs = [
        Obj(0, [0, 0, W * 1.0000001, H * 1.0000001], polygons=[[[0, 0], [W * 1.0000001, 0], [W, H]]]),
        Obj(1, [5, 5, 5, 9]),  # degenerate: zero width
        Obj(2, [-3, -2, 10, 8], keypoints=[[W, H, 2], [-0.0, 0, 2], [1e9, 3, 2]]),
        Obj(0, [10, 10, 12, 12], polygons=[[[10, 10], [12, 12]]]),  # a polygon of two points
        Obj(1, [np.nan, 1, 5, 5]),
        Obj(2, [1, 1, 20, 20], mask=np.zeros((H, W), bool)),  # an empty mask
    ]
    info = DatasetInfo("coco", None, list(NAMES), kpt_shape=(3, 3))
    pipe = build_labelled(parse_recipe(f"train: [{{{step}}}]"), info)
    for seed in range(6):
        out_img, out, stats, _ = pipe(img, Labels(objs), seed)
        h, w = out_img.shape[:2]
        assert stats.kept + stats.clipped + stats.dropped == len(objs)
        for o in out.objects:
            assert 0 <= o.box[0] < o.box[2] <= w and 0 <= o.box[1] < o.box[3] <= h
            for p in o.polygons:
                assert len(p) >= 3 and np.all(p >= 0) and np.all(p[:, 0] <= w) and np.all(p[:, 1] <= h)
            if o.keypoints is not None:
                assert o.keypoints.shape == (3, 3)
        assert {f.reason for f in stats.objects if f.index == 4} == {"invalid"}
    empty_img, empty, stats, _ = pipe(img, Labels(), 0)
    assert empty.objects == [] and stats.to_record()["kept"] == 0 and empty_img.shape == img.shape


@pytest.mark.parametrize(
    "step,expected",
    [
        ("{flip: {direction: horizontal}}", lambda x, y, W, H: (W - x, y)),
        ("{flip: {direction: vertical}}", lambda x, y, W, H: (x, H - y)),
        ("{albumentations: {transform: Transpose}}", lambda x, y, W, H: (y, x)),
        ("{shift: {x: [0.25, 0.25], y: [-0.125, -0.125]}}", lambda x, y, W, H: (x + 72, y - 27)),
        ("{trivial_augment: {}}", None),  # pinned below to TranslateX +32
    ],
)
def test_exact_moves_are_exact(step, expected):
    """Points on pixel centres land exactly where the pixels go (not only within the rendering tolerance)."""
    img, labels, _ = scene(1, "polygons", keypoints=True)
    H, W = img.shape[:2]
    recipe = parse_recipe(f"train: [{step}]")
    if expected is None:
        recipe.train[0].params.update({"only": ["TranslateX"], "bin": 30, "sign": 1})
        expected = lambda x, y, W, H: (x + 32, y)  # noqa: E731
    _, out, _, _ = build_labelled(recipe, info_for("polygons", True))(img, labels, 0)
    by_k = {o.attrs["k"]: o for o in out.objects}
    checked = 0
    for k, a in enumerate(labels.objects):
        moved = np.array([expected(x, y, W, H) for x, y in a.polygons[0]])
        inside = moved.min() >= 0 and moved[:, 0].max() <= W and moved[:, 1].max() <= H
        if inside:
            np.testing.assert_allclose(by_k[k].polygons[0], moved, atol=1e-3)
            checked += 1
        src = a.keypoints[FLIP_IDX] if ("flip" in step or "Transpose" in step) else a.keypoints  # mirrors swap
        for (x, y, _), (u, v, vis) in zip(src, by_k[k].keypoints if k in by_k else []):
            if vis:
                np.testing.assert_allclose((u, v), expected(x, y, W, H), atol=1e-3)
    assert checked >= 2


@pytest.mark.parametrize(
    "step",
    [
        "{albumentations: {transform: Resize, height: 864, width: 576}}",
        "{albumentations: {transform: LongestMaxSize, max_size: 72}}",
        "{albumentations: {transform: CropAndPad, px: -30, keep_size: true}}",
        "{albumentations: {transform: RandomResizedCrop, size: [648, 864], scale: [0.5, 0.5], ratio: [1.333, 1.334]}}",
    ],
)
def test_resizes_move_points_exactly(step):
    """A resize maps pixel centres (i + 0.5) * scale: a keypoint on a pixel centre stays on it, to 0.05 px,
    however large the change of scale (the rendering tests above stay within 1.5 px only)."""
    img, labels, _ = scene(0, "polygons", keypoints=True)
    H, W = img.shape[:2]
    out_img, out, _, applied = build_labelled(parse_recipe(f"train: [{step}]"), info_for("polygons", True))(
        img, labels, 0
    )
    h, w = out_img.shape[:2]
    crop = next((a["params"].get("crop_coords") for a in applied if a["params"].get("crop_coords")), None)
    x0, y0, x1, y1 = crop if crop else (0, 0, W, H)
    if "CropAndPad" in step:
        x0, y0, x1, y1 = 30, 30, W - 30, H - 30
    sx, sy = w / (x1 - x0), h / (y1 - y0)
    for a, b in zip(labels.objects, out.objects, strict=True):
        for (x, y, _), (u, v, vis) in zip(a.keypoints, b.keypoints):
            if vis:
                assert abs(u - (x - x0) * sx) < 0.05 and abs(v - (y - y0) * sy) < 0.05, (step, x, y, u, v)


def test_clip_polygon_and_area():
    sq = np.array([[-5, -5], [5, -5], [5, 5], [-5, 5]], float)
    c = clip_polygon(sq, 10, 10)
    assert polygon_area(c) == pytest.approx(25.0)
    assert len(clip_polygon(sq - 20, 10, 10)) == 0
    tri = np.array([[0, 0], [8, 0], [0, 8]], float)
    assert polygon_area(clip_polygon(tri, 10, 10)) == pytest.approx(32.0)


# ============================================================================= refusals and warnings


def test_step_that_cannot_move_a_label_kind_is_a_recipe_error():
    elastic = "train:\n  - flip: {}\n  - albumentations: {transform: ElasticTransform, p: 1}\n"
    with pytest.raises(
        RecipeError, match=r"<string>:3: train\[1\] albumentations: ElasticTransform cannot move the keypoints"
    ):
        check_labelled(parse_recipe(elastic), ("keypoints",))
    with pytest.raises(RecipeError, match="ElasticTransform.*boxes"):
        build_labelled(parse_recipe(elastic), info_for("boxes"))
    # a semantic mask follows any warp exactly: allowed, and it moves with the pixels
    img, labels, shapes = scene(0, "semantic")
    pipe = build_labelled(parse_recipe(elastic), info_for("semantic"))
    out_img, out, stats, _ = pipe(img, labels, 1)
    check_output(out_img, out, shapes, "semantic", False, stats, "elastic semantic")
    with pytest.raises(RecipeError, match="RandomGridShuffle.*boxes"):
        check_labelled(parse_recipe("train: [{albumentations: {transform: RandomGridShuffle}}]"), ("boxes",))
    assert (
        check_labelled(parse_recipe("train: [{albumentations: {transform: RandomGridShuffle}}]"), ("keypoints",)) == []
    )
    with pytest.raises(RecipeError, match="Morphological cannot move the polygons.*grows or shrinks"):
        check_labelled(parse_recipe("train: [{albumentations: {transform: Morphological}}]"), ("masks", "polygons"))
    assert check_labelled(parse_recipe("train: [{albumentations: {transform: Morphological}}]"), ("semantic",)) == []
    # pixel-only steps are always fine
    assert (
        check_labelled(parse_recipe("train: [{albumentations: {transform: GaussianBlur}}]"), ("boxes", "keypoints"))
        == []
    )


def test_label_kinds_of_a_dataset():
    assert label_kinds(info_for("boxes")) == ("boxes",)
    assert label_kinds(info_for("polygons", True)) == ("boxes", "polygons", "keypoints")
    assert label_kinds(info_for("masks")) == ("boxes", "polygons", "masks")
    assert label_kinds(info_for("semantic")) == ("semantic",)


def test_border_is_constant_on_labelled_data_and_reflect_warns():
    img, labels, _ = scene(0, "polygons")
    plain = parse_recipe("train: [{rotate: {degrees: [30, 30]}}]")
    assert label_warnings(plain) == []  # no border written: nothing to warn about
    out_img, _, _, _ = build_labelled(plain, info_for("polygons"))(img, labels, 0)
    assert (out_img[0, 0] == 0).all() and (out_img[-1, -1] == 0).all()  # corners filled, not mirrored
    written = parse_recipe("border: reflect\ntrain: [{rotate: {degrees: [30, 30]}}]")
    (w,) = label_warnings(written)
    assert "reflect" in w and "no labels" in w and "labels: {border: reflect}" in w
    for text, where in (
        ("train: [{rotate: {degrees: 30}}]\nlabels: {border: wrap}\n", "train[0] rotate"),
        ("train: [{rotate: {degrees: 30, border: reflect}}]\n", "train[0] rotate"),
        ("train: [{albumentations: {transform: Rotate, border_mode: 4}}]\n", "train[0] albumentations"),
    ):
        warns = check_labelled(parse_recipe(text), ("boxes",))
        assert any(x.startswith(where) and "no labels" in x for x in warns), (text, warns)
    mixed = parse_recipe("train: [{flip: {}}]\nbatch: {mixup: {alpha: 0.2}}\n")
    assert any("classification only" in x for x in label_warnings(mixed))
    reflected = parse_recipe("train: [{rotate: {degrees: [30, 30]}}]\nlabels: {border: reflect}\n")
    out_img, _, _, _ = build_labelled(reflected, info_for("polygons"))(img, labels, 0)
    assert not (out_img[0, 0] == 0).all()


def test_masks_are_filled_with_the_ignore_value():
    img, labels, _ = scene(0, "semantic")
    r = "train: [{rotate: {degrees: [30, 30]}}]\nlabels: {ignore_value: %d}\n"
    _, out, _, _ = build_labelled(parse_recipe(r % 255), info_for("semantic"))(img, labels, 0)
    assert out.semantic[0, 0] == 255 and out.semantic[108, 144] != 255
    _, out, _, _ = build_labelled(parse_recipe(r % 0), info_for("semantic"))(img, labels, 0)
    assert out.semantic[0, 0] == 0


# ============================================================================= the labels: section


def test_labels_section_parses_with_documented_defaults_and_strict_errors():
    r = parse_recipe("train: [{flip: {}}]\nlabels: {min_visibility: 0.3}\n")
    assert r.labels == LabelSpec(min_visibility=0.3)
    assert r.resolved()["labels"] == {
        "border": "constant",
        "min_visibility": 0.3,
        "min_area": 4.0,
        "box_from": "auto",
        "ignore_value": 255,
    }
    again = parse_recipe(r.resolved_yaml())
    assert again.labels == r.labels and again.hash == r.hash
    assert parse_recipe("train: [{flip: {}}]\n").labels is None
    with pytest.raises(
        RecipeError, match=r"<string>:2: labels: unknown parameter 'min_visiblity'.*did you mean 'min_visibility'"
    ):
        parse_recipe("train: [{flip: {}}]\nlabels: {min_visiblity: 0.3}\n")
    with pytest.raises(RecipeError, match=r"min_visibility: 1.5 is out of range"):
        parse_recipe("train: [{flip: {}}]\nlabels: {min_visibility: 1.5}\n")
    with pytest.raises(RecipeError, match=r"box_from.*allowed: auto \| corners"):
        parse_recipe("train: [{flip: {}}]\nlabels: {box_from: mask}\n")
    with pytest.raises(RecipeError, match="labels must be a mapping"):
        parse_recipe("train: [{flip: {}}]\nlabels: [1, 2]\n")


def test_recipes_check_labels_cli(tmp_path):
    elastic = tmp_path / "elastic.yaml"
    elastic.write_text("train:\n  - flip: {}\n  - albumentations: {transform: ElasticTransform}\n")
    reflect = tmp_path / "reflect.yaml"
    reflect.write_text("border: reflect\ntrain:\n  - rotate: {degrees: 10}\n")
    runner = CliRunner()
    res = runner.invoke(cli.app, ["recipes", "check", str(elastic), str(reflect), "--labels", "coco"])
    assert res.exit_code == 2
    assert "elastic.yaml:3: train[1] albumentations: ElasticTransform cannot move the boxes" in res.output
    assert "reflect.yaml: ok" in res.output and "warning:" in res.output and "no labels" in res.output
    res = runner.invoke(cli.app, ["recipes", "check", str(elastic), "--labels", "masks"])
    assert res.exit_code == 0, res.output  # a semantic mask follows an elastic warp exactly
    res = runner.invoke(cli.app, ["recipes", "check", str(elastic)])
    assert res.exit_code == 0  # without --labels: a classification recipe
    res = runner.invoke(cli.app, ["recipes", "check", str(elastic), "--labels", "yol"])
    assert res.exit_code == 2 and "did you mean 'yolo'" in res.output
    res = runner.invoke(cli.app, ["recipes", "ops"])
    assert "labels section (labelled datasets only): border: constant = " in res.output.replace("\n", " ")
    assert kinds_of_format("yolo") == ("boxes", "polygons", "keypoints")
    with pytest.raises(UsageError):
        kinds_of_format("folders")


# ============================================================================= how points are moved


REPLAY_RECIPE = """border: constant
train:
  - flip: {direction: both, p: 0.5}
  - shift: {x: 0.1, y: 0.1, p: 0.5}
  - affine: {scale: [0.8, 1.2], translate: 0.1, rotate: 20, shear: 10, p: 0.7}
  - some_of: {n: 2, steps: [{flip: {direction: horizontal}}, {rotate: {degrees: 15}}, {color: {brightness: 0.2}}]}
  - trivial_augment: {}
  - rand_augment: {n: 2, m: 9}
  - albumentations: {transform: RandomResizedCrop, size: [100, 120], scale: [0.5, 1.0]}
  - albumentations: {transform: Perspective, scale: [0.05, 0.1]}
  - albumentations: {transform: Transpose, p: 0.5}
"""


def _same_labels(a: Labels, b: Labels, what: str, tol: float = 1e-3) -> None:
    assert len(a.objects) == len(b.objects), what
    for oa, ob in zip(a.objects, b.objects):
        assert np.abs(oa.box - ob.box).max() <= tol, what
        for pa, pb in zip(oa.polygons, ob.polygons, strict=True):
            assert pa.shape == pb.shape and np.abs(pa - pb).max() <= tol, what
        if oa.keypoints is not None:
            assert ob.keypoints is not None and np.abs(oa.keypoints - ob.keypoints).max() <= tol, what


def test_points_replayed_after_the_pipeline_equal_the_compose_moving_them(monkeypatch):
    """Points are moved by replaying each applied step's keypoint function with the parameters it drew
    (no albumentations keypoint processor per call); the Compose moving them as keypoints gives the
    same labels (to float32 precision), for every kind of step and container. The image is then made
    as for an unlabelled dataset: geometric steps as one warp (the same pixels as ``Augmenter``)."""
    import augkit.labels.geometry as geometry

    recipe = parse_recipe(REPLAY_RECIPE)
    info = info_for("polygons", keypoints=True)
    fast = build_labelled(recipe, info)
    unlabelled = recipe.build()
    monkeypatch.setattr(geometry, "replayable", lambda compose: False)
    slow = build_labelled(recipe, info)
    assert fast.replay and not slow.replay
    for index in range(3):
        img, labels, _ = scene(index, "polygons", keypoints=True)
        for seed in range(12):
            a_img, a, _, a_applied = fast(img.copy(), labels, seed)
            b_img, b, _, b_applied = slow(img.copy(), labels, seed)
            assert a_applied == b_applied and a_img.shape == b_img.shape
            fused, applied = unlabelled(img.copy(), seed)
            assert np.array_equal(a_img, fused) and applied == a_applied
            _same_labels(a, b, f"image {index} seed {seed}")


def test_a_pipeline_that_may_repeat_a_step_moves_points_in_the_compose():
    r = parse_recipe("train:\n  - some_of: {n: 2, replace: true, steps: [{flip: {}}, {rotate: {degrees: 10}}]}\n")
    pipe = build_labelled(r, info_for("polygons"))
    assert not pipe.replay
    img, labels, shapes = scene(0, "polygons")
    for seed in range(4):
        out_img, out, stats, applied = pipe(img.copy(), labels, seed)
        check_output(out_img, out, shapes, "polygons", False, stats, f"seed {seed}", _mirrored(applied))


@pytest.mark.parametrize("replace", [False, True])
@pytest.mark.parametrize("step", ["rotate: {degrees: [25, 25]}", "affine: {scale: [0.7, 0.7], rotate: [-20, -20]}"])
def test_reflect_border_keeps_each_object_labelled_where_it_is(step, replace):
    """With a mirroring border albumentations adds a mirrored copy of every point per image copy the
    border shows; the object's own label must stay on the object (mirror copies stay unlabelled), so
    the labels equal those with a constant border. Both ways of moving points (``replace``: the
    Compose moves them)."""
    body = f"some_of: {{n: 1, replace: {str(replace).lower()}, steps: [{{{step}}}]}}"
    info = info_for("polygons", keypoints=True)
    img, labels, _ = scene(1, "polygons", keypoints=True)
    outs = {}
    for border in ("constant", "reflect"):
        r = parse_recipe(f"train: [{{{body}}}]\nlabels: {{border: {border}}}\n")
        pipe = build_labelled(r, info)
        assert pipe.replay is not replace
        out_img, outs[border], _, _ = pipe(img.copy(), labels, 0)
    assert len(outs["reflect"].objects) >= 2
    _same_labels(outs["reflect"], outs["constant"], step)
