"""Labels drawn on an image, for eyes (``augkit preview`` on a labelled dataset).

Boxes with their class names, polygons and masks as translucent overlays in the class's colour,
keypoints as dots (one colour per keypoint index, so a left/right swap under a flip shows) joined
by the dataset's skeleton, a semantic mask in its own palette (when the PNG had one). Drawn with
OpenCV on a copy of an RGB uint8 image; coordinates as in :mod:`augkit.labels.model` (pixels, the
origin at the top-left corner of the top-left pixel).
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import ArrayLike

from augkit.labels.model import MASK_IGNORE, DatasetInfo, Labels, Obj

FONT = cv2.FONT_HERSHEY_SIMPLEX
#: class colours (RGB), in turn: distinct on photos and from each other (Tableau 10, then brighter ones)
CLASS_COLORS = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (255, 255, 0), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0), (0, 0, 255),
)  # fmt: skip
#: keypoint colours by index (RGB)
KEYPOINT_COLORS = ((255, 64, 64), (64, 160, 255), (255, 220, 0), (0, 220, 120), (200, 80, 255), (255, 140, 0))
_SHIFT = 4  # fixed-point bits: outlines drawn at sub-pixel positions


def class_color(cls: int) -> tuple[int, int, int]:
    return CLASS_COLORS[int(cls) % len(CLASS_COLORS)]


def _pts(points: ArrayLike) -> np.ndarray:
    """Pixel-edge coordinates to OpenCV's pixel-centre fixed-point integers."""
    return np.round((np.asarray(points, np.float64).reshape(-1, 2) - 0.5) * (1 << _SHIFT)).astype(np.int32)


def _blend(img: np.ndarray, where: np.ndarray, color, alpha: float) -> None:
    if where.any():
        img[where] = (img[where] * (1 - alpha) + np.array(color, np.float64) * alpha).astype(np.uint8)


def _name(names: list[str], cls: int) -> str:
    return names[cls] if 0 <= cls < len(names) else str(cls)


def draw_labels(
    image: np.ndarray,
    labels: Labels,
    info: DatasetInfo | None = None,
    *,
    names: list[str] | None = None,
    alpha: float = 0.4,
    thickness: int | None = None,
) -> np.ndarray:
    """A copy of ``image`` (H, W, 3 uint8 RGB) with ``labels`` drawn on it. ``info`` gives the class
    names and the keypoint skeleton (or ``names`` alone); ``thickness`` defaults to one pixel per
    160 of the image's longer side."""
    img = np.ascontiguousarray(image, dtype=np.uint8).copy()
    h, w = img.shape[:2]
    names = list(names if names is not None else (info.names if info is not None else []))
    t = thickness or max(1, round(max(h, w) / 160))
    if labels.semantic is not None:
        _draw_semantic(img, labels, alpha)
    for o in labels.objects:  # fills first, so outlines and names stay on top
        _draw_fill(img, o, alpha)
    for o in labels.objects:
        _draw_outline(img, o, t)
    skeleton = _skeleton(info)
    for o in labels.objects:
        if o.keypoints is not None:
            _draw_keypoints(img, o.keypoints, skeleton, class_color(o.cls), t)
    for o in labels.objects:
        _draw_name(img, o, _name(names, o.cls), t)
    return img


def _draw_semantic(img: np.ndarray, labels: Labels, alpha: float) -> None:
    sem = labels.semantic
    assert sem is not None  # draw_labels calls this for a semantic mask only
    if sem.shape != img.shape[:2]:
        return  # a mask that does not fit its image: nothing sensible to draw
    pal = labels.palette
    for v in np.unique(sem):
        if v == 0:
            continue  # background
        color: tuple[int, ...]
        if v == MASK_IGNORE:
            color = (40, 40, 40)
        elif pal is not None and int(v) < len(pal) and np.any(pal[int(v)]):
            color = tuple(int(c) for c in pal[int(v)])
        else:
            color = class_color(int(v) - 1)
        _blend(img, sem == v, color, alpha)
        _outline(img, sem == v, color)


def _outline(img: np.ndarray, where: np.ndarray, color) -> None:
    """The edge of a mask region, in a darker shade of its colour (seen even on pixels of that colour)."""
    contours, _ = cv2.findContours(where.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, tuple(int(c * 0.45) for c in color), 1, cv2.LINE_8)


def _draw_fill(img: np.ndarray, o: Obj, alpha: float) -> None:
    color = class_color(o.cls)
    if o.mask is not None and o.mask.shape == img.shape[:2]:
        _blend(img, o.mask.astype(bool), color, alpha)
        _outline(img, o.mask.astype(bool), color)
    elif o.polygons:
        m = np.zeros(img.shape[:2], np.uint8)
        cv2.fillPoly(m, [_pts(p) for p in o.polygons if len(p) >= 3], 1, cv2.LINE_8, _SHIFT)
        _blend(img, m.astype(bool), color, alpha)


def _draw_outline(img: np.ndarray, o: Obj, t: int) -> None:
    color = class_color(o.cls)
    for p in o.polygons:
        if len(p) >= 2:
            cv2.polylines(img, [_pts(p)], True, color, max(1, t // 2), cv2.LINE_AA, _SHIFT)
    # the box's outline on its outermost pixels (the box runs along pixel edges: x0 <= x < x1)
    eps = 1e-3  # float noise (41.99995 is the edge 42)
    left, top = int(np.floor(o.box[0] + eps)), int(np.floor(o.box[1] + eps))
    right, bottom = int(np.ceil(o.box[2] - eps)) - 1, int(np.ceil(o.box[3] - eps)) - 1
    h = t // 2
    cv2.rectangle(img, (left + h, top + h), (max(left + h, right - h), max(top + h, bottom - h)), color, t, cv2.LINE_8)


def _skeleton(info: DatasetInfo | None) -> list[tuple[int, int]]:
    """Skeleton edges as 0-based keypoint index pairs (COCO stores them 1-based)."""
    if info is None or not info.skeleton:
        return []
    flat = [int(v) for e in info.skeleton for v in e]
    base = 1 if flat and min(flat) >= 1 else 0
    return [(int(a) - base, int(b) - base) for a, b in info.skeleton]


def _draw_keypoints(img: np.ndarray, kpts: np.ndarray, skeleton, color, t: int) -> None:
    h, w = img.shape[:2]
    kp = np.asarray(kpts, np.float64).reshape(-1, 3)
    shown = (kp[:, 2] > 0) & (kp[:, 0] >= 0) & (kp[:, 1] >= 0) & (kp[:, 0] <= w) & (kp[:, 1] <= h)
    for a, b in skeleton:
        if 0 <= a < len(kp) and 0 <= b < len(kp) and shown[a] and shown[b]:
            cv2.line(img, tuple(_pts(kp[a, :2])[0]), tuple(_pts(kp[b, :2])[0]), color, max(1, t // 2), cv2.LINE_AA,
                     _SHIFT)  # fmt: skip
    for i, (x, y, _) in enumerate(kp):
        if shown[i]:
            c = KEYPOINT_COLORS[i % len(KEYPOINT_COLORS)]
            cv2.circle(img, tuple(_pts([x, y])[0]), (t + 1) << _SHIFT, c, -1, cv2.LINE_AA, _SHIFT)


def _draw_name(img: np.ndarray, o: Obj, text: str, t: int) -> None:
    h, w = img.shape[:2]
    scale = 0.3 + 0.1 * t
    (tw, th), base = cv2.getTextSize(text, FONT, scale, 1)
    x = int(np.clip(o.box[0], 0, max(0, w - tw - 2)))
    y = int(o.box[1]) - 2
    if y - th - base < 0:  # no room above the box: inside its top edge
        y = min(h - 1, int(o.box[1]) + th + 2)
    color = class_color(o.cls)
    cv2.rectangle(img, (x, y - th - base), (x + tw + 2, y + 1), color, -1)
    dark = sum(color) > 380
    cv2.putText(img, text, (x + 1, y - base + 1), FONT, scale, (0, 0, 0) if dark else (255, 255, 255), 1, cv2.LINE_AA)


def scale_labels(labels: Labels, sx: float, sy: float, size: tuple[int, int]) -> Labels:
    """``labels`` of an image resized by (sx, sy) to ``size`` (width, height): coordinates scaled,
    masks resized with nearest neighbour (for display: the preview draws at thumbnail size)."""
    wh = (int(size[0]), int(size[1]))

    def nearest(m: np.ndarray) -> np.ndarray:
        return cv2.resize(m.astype(np.uint8), wh, interpolation=cv2.INTER_NEAREST)

    objs = []
    for o in labels.objects:
        kp = None
        if o.keypoints is not None:
            kp = np.asarray(o.keypoints, np.float64).copy()
            kp[:, 0] *= sx
            kp[:, 1] *= sy
        objs.append(
            Obj(
                o.cls,
                np.asarray(o.box, np.float64) * [sx, sy, sx, sy],
                [np.asarray(p, np.float64) * [sx, sy] for p in o.polygons],
                None if o.mask is None else nearest(o.mask).astype(bool),
                kp,
                dict(o.attrs),
            )
        )
    sem = None if labels.semantic is None else nearest(labels.semantic)
    return Labels(objs, sem, labels.palette)
