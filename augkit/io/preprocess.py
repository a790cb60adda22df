"""Resize policy shared by training, prediction and TTA.

``resize_short(img, size)`` scales the image so its *shorter* side is ``size`` (area
interpolation when shrinking, linear when growing); ``center_crop(img, size)`` then cuts
the central ``size x size`` square. Training applies the recipe between the two (so the
recipe works on a small image and its geometry still sees a border to crop away);
prediction uses resize + center crop. Arrays stay uint8 until the tensor conversion.

``resize_short`` refuses (``ImageError`` "bad dimensions") an input more than
:data:`~augkit.io.images.MAX_ASPECT` times longer than wide, or an output over the pixel
limit: a 1 x 999,999 strip resized to a short side of 32 would otherwise allocate a
32 x 32M image (~3 GB). Files are refused from their header before this; the guard holds
for arrays from anywhere else (a recipe's output, the Python API).
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from augkit.errors import ImageError
from augkit.io.images import MAX_ASPECT, MAX_SIDE
from augkit.limits import DEFAULT_MAX_PIXELS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_POLICY = "resize shorter side to image_size, center crop image_size x image_size"


def resize_short(
    img: np.ndarray, size: int, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, path: str | os.PathLike = "<image>"
) -> np.ndarray:
    """Scale so the shorter side is ``size``; ``path`` names the image in the error."""
    h, w = img.shape[:2]
    if min(h, w) == size:
        return img
    scale = size / max(1, min(h, w))
    nh, nw = short_side_shape(h, w, size)
    _check_resize(w, h, nw, nh, max_pixels, path)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, (nw, nh), interpolation=interp)


def short_side_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """(height, width) that :func:`resize_short` gives an ``h x w`` image (shorter side ``size``)."""
    if min(h, w) == size:
        return h, w
    scale = size / max(1, min(h, w))
    return max(size, round(h * scale)), max(size, round(w * scale))


def _check_resize(w: int, h: int, nw: int, nh: int, max_pixels: int | None, path: str | os.PathLike) -> None:
    if min(w, h) < 1 or max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageError(path, "bad dimensions", f"{w}x{h}: aspect ratio over {MAX_ASPECT}:1, not resized")
    if max(nw, nh) > MAX_SIDE or (max_pixels is not None and nw * nh > max_pixels):
        raise ImageError(path, "bad dimensions", f"resizing {w}x{h} would give {nw}x{nh} = {nw * nh:,} pixels")


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return np.ascontiguousarray(img[top : top + size, left : left + size])


def eval_image(img: np.ndarray, size: int, *, path: str | os.PathLike = "<image>") -> np.ndarray:
    """The deterministic view of an image a model sees at prediction time (uint8, size x size x 3)."""
    return center_crop(resize_short(img, size, path=path), size)
