"""Online augmentation for labelled datasets: a YOLO, COCO, Pascal VOC or mask folder plus a recipe, as a
torch ``Dataset`` in torchvision's detection and segmentation convention.

Each sample is ``(image, target)``: the image a float tensor (3, H, W) in 0..1 (``output="uint8"``: 0..255;
``normalize=True`` subtracts ``mean`` and divides by ``std``), and ``target`` a dict:

- ``boxes``: ``tv_tensors.BoundingBoxes`` (N, 4), format XYXY, in pixels, ``canvas_size`` (H, W);
- ``labels``: int64 (N,) class indices (0-based, as ``classes`` names them; add 1 yourself for a
  torchvision detector whose class 0 is the background);
- ``image_id`` (int), ``area`` (N,) and ``iscrowd`` (N,), as torchvision's COCO references use them;
- ``masks``: ``tv_tensors.Mask`` (N, H, W) uint8, one per object (from its mask, else its polygons, else
  its box) when ``masks`` is on (default: COCO datasets);
- ``keypoints``: float32 (N, K, 3) x, y, visibility when the dataset has keypoints (Keypoint R-CNN's form;
  keypoints that left the image have visibility 0, and x = y = 0);
- ``mask``: ``tv_tensors.Mask`` (H, W) int64, the class-index mask of a semantic mask dataset (pixels a
  warp brought in from outside the image hold the recipe's ``labels.ignore_value``, 255 by default).

:func:`collate_labelled` batches samples as torchvision's detection models take them: a list of images
and a list of targets (images may differ in size; ``torch.stack`` them when they do not).

Augmentation: the recipe's ``train`` steps through :class:`augkit.labels.geometry.LabelledPipeline`, so
every label moves with the pixels, seeded per sample from ``derive_seed(seed, key, epoch, salt="train")``
(``key``: the image's path relative to the dataset root), as :class:`~augkit.training.dataset.AugmentedImageFolder`
does: the same tensors at any ``num_workers``; :meth:`set_epoch` changes them each epoch. A recipe step
that cannot move one of the dataset's label kinds is a :class:`~augkit.errors.RecipeError` at
construction. Mixup and cutmix (a recipe's ``batch:`` section) mix class labels: they are for
classification only, and a labelled dataset refuses them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from augkit.errors import ImageError, RecipeError, UsageError
from augkit.io.images import read_image
from augkit.io.preprocess import IMAGENET_MEAN, IMAGENET_STD
from augkit.labels.formats import get_format, open_dataset
from augkit.labels.geometry import LabelledPipeline, LabelStats, label_kinds
from augkit.labels.model import DatasetInfo, Item, Labels, box_area
from augkit.limits import DEFAULT_MAX_PIXELS
from augkit.recipe.api import Recipe, load_recipe
from augkit.seeding import derive_seed
from augkit.training.dataset import SharedEpoch

OUTPUTS = ("float", "uint8")
CHECKS = ("labels", "none")
Reader = Callable[[DatasetInfo, Item], Labels]


class LabelledDataset(SharedEpoch, Dataset):
    """One split of a labelled dataset, with a recipe, as ``(image, target)`` pairs (see the module doc).

    Args:
        src: the dataset folder (its kind detected from the layout, or ``kind``), or a
            :class:`~augkit.labels.model.DatasetInfo` already opened.
        recipe: a :class:`~augkit.recipe.api.Recipe`, a built-in recipe name or a recipe file; None: no augmentation.
        split: which split to serve (``train``, ``val``, ...).
        seed: decides every augmentation together with the sample's key and the epoch.
        output: ``"float"`` (float32 0..1) or ``"uint8"``.
        normalize: subtract ``mean`` and divide by ``std`` (float output only; torchvision's detectors
            normalize inside the model, so the default is off).
        masks: put one mask per object in the target; None: for COCO datasets.
        check: ``"labels"`` reads every label once at construction and leaves out the images whose
            labels (or image header) fail, listing them in ``errors``; ``"none"`` trusts the files.
        reader: how an item's labels are read (default: the dataset format's reader).
    """

    def __init__(
        self,
        src: str | os.PathLike | DatasetInfo,
        recipe: Recipe | str | os.PathLike | None = None,
        *,
        kind: str | None = None,
        split: str = "train",
        seed: int = 0,
        output: str = "float",
        normalize: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        masks: bool | None = None,
        check: str = "labels",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        reader: Reader | None = None,
    ):
        if output not in OUTPUTS:
            raise UsageError(f"output {output!r} is not one of {', '.join(OUTPUTS)}")
        if check not in CHECKS:
            raise UsageError(f"check {check!r} is not one of {', '.join(CHECKS)}")
        self.info = src if isinstance(src, DatasetInfo) else open_dataset(Path(src), kind)
        if split not in self.info.splits:
            raise UsageError(
                f"{self.info.root}: no split {split!r} (the dataset has: {', '.join(self.info.splits) or 'none'})"
            )
        self.recipe = load_recipe(recipe) if isinstance(recipe, (str, os.PathLike)) else recipe
        if self.recipe is not None and self.recipe.batch is not None:
            raise RecipeError(
                "mixup and cutmix mix class labels: they are for classification only, not for a "
                f"{self.info.kind} dataset's boxes, masks and keypoints; remove the batch section",
                source=self.recipe.source,
                where="batch",
            )
        self.split, self.seed, self.output, self.normalize = split, int(seed), output, bool(normalize)
        self.mean, self.std, self.max_pixels = tuple(map(float, mean)), tuple(map(float, std)), max_pixels
        self._mean, self._std = torch.tensor(self.mean).view(3, 1, 1), torch.tensor(self.std).view(3, 1, 1)
        self.classes = list(self.info.names)
        self.kinds = label_kinds(self.info)
        self.masks = (self.info.kind == "coco") if masks is None else bool(masks)
        self.num_keypoints = _keypoint_count(self.info)
        self.reader = reader if reader is not None else get_format(self.info.kind).read
        self._augments = self.recipe is not None and bool(self.recipe.train)
        # built now so that a step that cannot move a label kind fails here; each worker builds its own
        self._pipeline = self._build() if self._augments else None
        self.warnings = list(self._pipeline.warnings) if self._pipeline is not None else []
        self.errors: list[ImageError] = []
        items = list(self.info.splits[split])
        if check == "labels":
            items = self._check(items)
        self.items = items
        self.keys = [_key(self.info, it) for it in items]
        self._init_epoch()

    def _build(self) -> LabelledPipeline:
        assert self.recipe is not None
        return LabelledPipeline(self.recipe, self.info)

    def _check(self, items: list[Item]) -> list[Item]:
        keep = []
        for it in items:
            try:
                self.reader(self.info, it)
            except ImageError as exc:  # LabelError is an ImageError: file, line and reason
                self.errors.append(exc)
                continue
            keep.append(it)
        return keep

    # ------------------------------------------------------------------ the Dataset protocol
    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        img, labels, _ = self.sample(index)
        return self.to_tensor(img), self.target(labels, img.shape[:2], index)

    def sample_seed(self, index: int) -> int:
        """The seed the recipe gets for sample ``index`` in the current epoch."""
        return derive_seed(self.seed, self.keys[index], self.epoch, salt="train")

    def sample(self, index: int) -> tuple[np.ndarray, Labels, LabelStats | None]:
        """The augmented sample as augkit holds it: an RGB uint8 image, its labels and what happened to
        each object (None without a recipe)."""
        item = self.items[index]
        img = read_image(item.image, max_pixels=self.max_pixels)
        labels = self.reader(self.info, item)
        if not self._augments:
            return img, labels, None
        if self._pipeline is None:
            self._pipeline = self._build()
        img, labels, stats, _ = self._pipeline(img, labels, self.sample_seed(index))
        return img, labels, stats

    def to_tensor(self, img: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()
        if self.output == "uint8":
            return x
        x = x.float().div_(255.0)
        if self.normalize:
            x = x.sub_(self._mean).div_(self._std)
        return x

    def target(self, labels: Labels, hw: tuple[int, int], index: int) -> dict:
        """The torchvision-convention target of ``labels`` on an image of height, width ``hw``."""
        H, W = int(hw[0]), int(hw[1])
        objs = labels.objects
        boxes = np.array([o.box for o in objs], np.float32).reshape(-1, 4)
        out: dict = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(H, W)),
            "labels": torch.tensor([o.cls for o in objs], dtype=torch.int64),
            "image_id": int(index),
            "iscrowd": torch.tensor([int(o.attrs.get("iscrowd", 0)) for o in objs], dtype=torch.int64),
        }
        if self.masks:
            m = np.stack([_object_mask(o, H, W) for o in objs]) if objs else np.zeros((0, H, W), np.uint8)
            out["masks"] = tv_tensors.Mask(torch.from_numpy(m))
            out["area"] = torch.from_numpy(m.reshape(len(objs), -1).sum(1).astype(np.float32))
        else:
            out["area"] = torch.tensor([box_area(o.box) for o in objs], dtype=torch.float32)
        if self.num_keypoints:
            k = np.zeros((len(objs), self.num_keypoints, 3), np.float32)
            for i, o in enumerate(objs):
                if o.keypoints is not None and len(o.keypoints) == self.num_keypoints:
                    k[i] = o.keypoints
            out["keypoints"] = torch.from_numpy(k)
        if labels.semantic is not None:
            out["mask"] = tv_tensors.Mask(torch.from_numpy(labels.semantic.astype(np.int64)))
        return out

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pipeline"] = None  # each worker builds its own pipeline
        return state

    def __repr__(self) -> str:
        name = self.recipe.name if self.recipe is not None else None
        return (
            f"{type(self).__name__}({str(self.info.root)!r}, {self.info.kind}, split={self.split!r}, "
            f"{len(self)} images, {len(self.classes)} classes, recipe={name!r}, seed={self.seed}, epoch={self.epoch})"
        )


def collate_labelled(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """A batch as torchvision's detection models take it: a list of images and a list of targets."""
    return [img for img, _ in batch], [t for _, t in batch]


def _key(info: DatasetInfo, item: Item) -> str:
    try:
        return item.image.relative_to(info.root).as_posix()
    except ValueError:
        return item.image.as_posix()


def _keypoint_count(info: DatasetInfo) -> int:
    if info.kpt_shape:
        return int(info.kpt_shape[0])
    return len(info.keypoint_names) if info.keypoint_names else 0


def _object_mask(obj, H: int, W: int) -> np.ndarray:
    """The object's pixels: its mask, else its polygons filled (pixel centres inside), else its box."""
    if obj.mask is not None:
        return obj.mask.astype(np.uint8)
    m = np.zeros((H, W), np.uint8)
    if obj.polygons:
        pts = [np.round((p - 0.5) * 16).astype(np.int32) for p in obj.polygons]
        cv2.fillPoly(m, pts, 1, cv2.LINE_8, 4)
        return m
    x0, y0, x1, y1 = obj.box
    m[int(round(y0)) : int(round(y1)), int(round(x0)) : int(round(x1))] = 1
    return m
