"""LabelledDataset: a labelled dataset (YOLO, COCO, mask folders) + a recipe as a torch Dataset whose targets
follow torchvision's detection convention, seeded per sample (the same tensors at any worker count)."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import numpy as np
import pytest
import torch
from _labelled import COLORS, KPT_NAMES, coco_dataset, color_mask, masks_dataset, yolo_dataset
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from augkit.errors import RecipeError, UsageError
from augkit.io.images import opencv_threads
from augkit.labels.model import Labels
from augkit.recipe.api import parse_recipe
from augkit.seeding import derive_seed
from augkit.training.detection import LabelledDataset, collate_labelled

SIZE = (160, 120)
RECIPE = """
train:
  - flip: {direction: horizontal, p: 0.5}
  - affine: {scale: [0.9, 1.1], rotate: 20, translate: 0.05, p: 0.9}
  - trivial_augment: {p: 0.5}
  - color: {brightness: 0.2, p: 0.5}
"""


@pytest.fixture(scope="module")
def pose(tmp_path_factory):
    return yolo_dataset(tmp_path_factory.mktemp("pose"), task="pose", splits={"train": 4, "val": 1}, size=SIZE)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return coco_dataset(tmp_path_factory.mktemp("coco"), keypoints=True, splits={"train": 3, "val": 1}, size=SIZE)


def _found(img: np.ndarray, color) -> np.ndarray | None:
    """The box (pixel edges) of the largest blob of ``color`` in ``img`` (photo pixels may match a few)."""
    m = color_mask(img, color, 60).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m)
    if n < 2:
        return None
    i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[i, cv2.CC_STAT_AREA] < 40:
        return None
    x, y, w, h = stats[i, :4]
    return np.array([x, y, x + w, y + h], np.float64)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / u


def test_targets_follow_torchvision_and_lie_on_the_objects(pose):
    ds = LabelledDataset(pose.root, parse_recipe(RECIPE), seed=4)
    assert ds.info.kind == "yolo" and ds.classes == ["box", "triangle", "ellipse"] and len(ds) == 5
    assert ds.errors == [] and ds.num_keypoints == 3
    checked = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            img, target = ds[i]
            assert img.dtype == torch.float32 and img.shape[0] == 3 and 0 <= img.min() and img.max() <= 1
            H, W = img.shape[1:]
            boxes = target["boxes"]
            assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format == tv_tensors.BoundingBoxFormat.XYXY
            assert tuple(boxes.canvas_size) == (H, W) and boxes.dtype == torch.float32
            n = len(boxes)
            assert target["labels"].dtype == torch.int64 and target["labels"].shape == (n,)
            assert target["keypoints"].shape == (n, 3, 3) and target["area"].shape == (n,)
            assert "masks" not in target and "mask" not in target
            pixels = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            for b, c in zip(boxes.tolist(), target["labels"].tolist()):
                drawn = _found(pixels, COLORS[c])
                assert drawn is not None, f"epoch {epoch} image {i}: a label on class {c}, which is not in the image"
                inside = drawn[0] > 0 and drawn[1] > 0 and drawn[2] < W and drawn[3] < H
                if inside and c == 0:  # a rectangle: the box of its four moved corners is exact
                    assert _iou(b, drawn) >= 0.9, (epoch, i, b, drawn)
                    checked += 1
                elif inside:  # a box-only label of a rotated triangle or ellipse: the moved box holds it
                    assert np.all(np.array(b[:2]) <= drawn[:2] + 1.5) and np.all(np.array(b[2:]) >= drawn[2:] - 1.5)
                    assert _iou(b, drawn) >= 0.6, (epoch, i, b, drawn)
            for c in range(3):  # every drawn object that is well in view has its label
                drawn = _found(pixels, COLORS[c])
                if drawn is not None and (drawn[2] - drawn[0]) * (drawn[3] - drawn[1]) > 600:
                    assert c in target["labels"].tolist(), f"epoch {epoch} image {i}: class {c} lost its label"
    assert checked >= 4
    # torchvision's own v2 transforms take the target as it is
    img, target = ds[0]
    flipped = TF.horizontal_flip(target["boxes"])
    assert torch.allclose(flipped[:, 0], W - target["boxes"][:, 2])


def test_same_tensors_at_any_worker_count_and_epochs_differ(pose):
    ds = LabelledDataset(pose.root, parse_recipe(RECIPE), seed=9, output="uint8")

    def epoch(workers: int, e: int):
        ds.set_epoch(e)
        with opencv_threads(1):
            loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_labelled)
            out = [(img, t) for imgs, ts in loader for img, t in zip(imgs, ts)]
        return out

    def same(a, b) -> bool:
        return all(
            torch.equal(x, y) and all(torch.equal(tx[k], ty[k]) for k in ("boxes", "labels", "keypoints"))
            for (x, tx), (y, ty) in zip(a, b, strict=True)
        )

    e0_w0, e0_w2, e1_w0 = epoch(0, 0), epoch(2, 0), epoch(0, 1)
    assert same(e0_w0, e0_w2)
    assert not same(e0_w0, e1_w0)
    assert ds.sample_seed(2) == derive_seed(9, ds.keys[2], 1, salt="train")
    assert ds.keys[0].startswith("images/train/")
    imgs, targets = collate_labelled([ds[0], ds[1]])
    assert isinstance(imgs, list) and isinstance(targets, list) and len(imgs) == len(targets) == 2


def test_coco_masks_keypoints_and_the_unaugmented_view(coco):
    plain = LabelledDataset(coco.root, None, output="uint8")
    assert plain.masks and plain.num_keypoints == len(KPT_NAMES)
    img, t = plain[0]
    H, W = img.shape[1:]
    m = t["masks"]
    assert isinstance(m, tv_tensors.Mask) and m.shape == (len(t["boxes"]), H, W) and m.dtype == torch.uint8
    scene = coco.scenes["train"]["train_00"]
    for mask, box, c in zip(m.numpy().astype(bool), t["boxes"].tolist(), t["labels"].tolist()):
        truth = next(s for s in scene.shapes if s.cls == c)
        assert (mask & truth.mask).sum() / (mask | truth.mask).sum() >= 0.95
        assert _iou(box, truth.box) >= 0.95
    assert torch.equal(t["area"], m.flatten(1).sum(1).float())
    assert torch.allclose(
        t["keypoints"], torch.tensor(np.stack([s.keypoints for s in scene.shapes]), dtype=torch.float32)
    )
    aug = LabelledDataset(coco.root, parse_recipe("train: [{rotate: {degrees: [25, 25]}}]"), output="uint8")
    img, t = aug[0]
    pixels = img.permute(1, 2, 0).numpy()
    for mask, c in zip(t["masks"].numpy().astype(bool), t["labels"].tolist()):
        drawn = color_mask(pixels, COLORS[c], 60)
        assert (mask & drawn).sum() / (mask | drawn).sum() >= 0.9
    val = LabelledDataset(coco.root, None, split="val")
    assert len(val) == 1


def test_semantic_masks_target(tmp_path):
    built = masks_dataset(tmp_path / "m", splits={"train": 2}, size=SIZE)
    ds = LabelledDataset(built.root, parse_recipe("train: [{rotate: {degrees: [30, 30]}}]"), output="uint8")
    img, t = ds[0]
    sem = t["mask"]
    assert isinstance(sem, tv_tensors.Mask) and sem.dtype == torch.int64 and sem.shape == img.shape[1:]
    assert sem[0, 0] == 255  # brought in from outside the image: the ignore value
    assert len(t["boxes"]) == 0
    plain = LabelledDataset(built.root, None)
    truth = built.scenes["train"]["train_00"].semantic()
    assert np.array_equal(plain[0][1]["mask"].numpy(), truth)


def test_recipes_a_labelled_dataset_cannot_use_are_refused(pose):
    mix = parse_recipe("train: [{flip: {}}]\nbatch: {mixup: {alpha: 0.2}}\n")
    with pytest.raises(RecipeError, match="batch: mixup and cutmix .* classification only"):
        LabelledDataset(pose.root, mix)
    elastic = parse_recipe("train: [{albumentations: {transform: ElasticTransform}}]")
    with pytest.raises(RecipeError, match=r"train\[0\] albumentations: .*ElasticTransform.*keypoints"):
        LabelledDataset(pose.root, elastic)
    with pytest.raises(UsageError, match="no split 'test' .*train, val"):
        LabelledDataset(pose.root, None, split="test")
    with pytest.raises(UsageError, match="output"):
        LabelledDataset(pose.root, None, output="half")


def test_bad_label_files_are_left_out_and_listed(tmp_path):
    built = yolo_dataset(tmp_path / "y", splits={"train": 3}, size=SIZE)
    bad = built.root / "labels" / "train" / "train_01.txt"
    bad.write_text("0 0.5 0.5\n")  # a detection row needs 5 numbers
    ds = LabelledDataset(built.root, None)
    assert len(ds) == 3 and len(ds.errors) == 1  # 3 images + 1 background, one left out
    assert "train_01.txt" in str(ds.errors[0])
    trusting = LabelledDataset(built.root, None, check="none")
    assert len(trusting) == 4


def test_a_custom_reader_and_info(pose):
    ds = LabelledDataset(pose.root, None)
    calls = []

    def reader(info, item):
        calls.append(item.image.name)
        return Labels()

    mine = LabelledDataset(ds.info, None, reader=reader, check="none")
    img, t = mine[1]
    assert calls == [mine.items[1].image.name] and len(t["boxes"]) == 0 and t["keypoints"].shape == (0, 3, 3)
