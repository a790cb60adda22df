"""What a labelled dataset is, once read: the same shapes for YOLO, COCO, Pascal VOC and mask folders.

Every coordinate is in **pixels of the image as decoded** (x right, y down, the origin at the top-left
corner of the top-left pixel), whatever the file format stores (YOLO: normalized centres; COCO:
x, y, w, h; VOC: 1-based corners). Readers convert in, writers convert out, so the geometry code
(:mod:`augkit.labels.geometry`) sees one convention only. numpy only: no torch, no OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: the kinds of labelled dataset augkit reads and writes (``--labels``); "folders" is classification.
KINDS = ("yolo", "coco", "voc", "masks")
#: default value written into mask pixels that a warp brought in from outside the image
MASK_IGNORE = 255


@dataclass
class Obj:
    """One object of one image.

    ``box`` is x_min, y_min, x_max, y_max in pixels (always set: readers derive it from a polygon,
    a mask or the keypoints when the file gives none). ``polygons`` are the object's outline as
    (K, 2) float arrays (COCO allows several parts; YOLO segmentation has one). ``mask`` is an
    instance mask (H, W) bool for COCO RLE segmentation. ``keypoints`` is (K, 3): x, y, visibility
    (0 not labelled / outside, 1 labelled but occluded, 2 visible; YOLO's 2-column form reads as
    v=2 for labelled points). ``attrs`` keeps what the format stores that augkit does not change
    (COCO ``iscrowd``, VOC ``difficult``/``truncated``/``pose``, the object's original id).
    """

    cls: int
    box: np.ndarray
    polygons: list[np.ndarray] = field(default_factory=list)
    mask: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.box = np.asarray(self.box, dtype=np.float64).reshape(4)
        self.polygons = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in self.polygons]
        if self.keypoints is not None:
            self.keypoints = np.asarray(self.keypoints, dtype=np.float64).reshape(-1, 3)


@dataclass
class Labels:
    """The labels of one image: its objects and, for mask datasets, its class-index mask."""

    objects: list[Obj] = field(default_factory=list)
    #: (H, W) uint8 class indices (semantic segmentation); None for detection datasets
    semantic: np.ndarray | None = None
    #: a PNG palette to write the mask with ((256, 3) uint8), when the source mask had one
    palette: np.ndarray | None = None


@dataclass
class Item:
    """One image of a dataset and where its labels came from."""

    image: Path
    split: str
    #: width and height as the label file says (COCO/VOC); None where the format does not store it
    size: tuple[int, int] | None = None
    #: the label file (YOLO .txt, VOC .xml, mask .png); None for COCO (one JSON) and background images
    label_file: Path | None = None
    #: format-specific fields of the image kept on output (COCO image entry fields, VOC header)
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetInfo:
    """What a dataset says about its classes and keypoints, shared by all its images."""

    kind: str
    root: Path
    names: list[str]
    #: split name -> its items, in a stable (sorted) order
    splits: dict[str, list[Item]] = field(default_factory=dict)
    #: keypoints per object and values per keypoint (YOLO ``kpt_shape``), None without keypoints
    kpt_shape: tuple[int, int] | None = None
    #: for each keypoint, the index of its mirror image under a horizontal flip (YOLO ``flip_idx``,
    #: or from COCO ``left_*``/``right_*`` names); None: no swap
    flip_idx: list[int] | None = None
    keypoint_names: list[str] | None = None
    skeleton: list[list[int]] | None = None
    #: format-specific top-level fields kept on output (the rest of data.yaml, COCO info/licenses/categories)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def items(self) -> list[Item]:
        return [it for split in self.splits.values() for it in split]


def box_from_points(points: np.ndarray) -> np.ndarray:
    """The tight x_min, y_min, x_max, y_max of (K, 2) points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])


def box_from_mask(mask: np.ndarray) -> np.ndarray | None:
    """The tight pixel box of a bool mask (x_max/y_max are pixel edges), None when it is empty."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def box_area(box: np.ndarray) -> float:
    return float(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))
