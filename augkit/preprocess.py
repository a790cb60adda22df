"""Resize policy shared by training, prediction and TTA.

``resize_short(img, size)`` scales the image so its *shorter* side is ``size`` (area
interpolation when shrinking, linear when growing); ``center_crop(img, size)`` then cuts
the central ``size x size`` square. Training applies the recipe between the two (so the
recipe works on a small image and its geometry still sees a border to crop away);
prediction uses resize + center crop. Arrays stay uint8 until the tensor conversion.
"""
from __future__ import annotations

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_POLICY = "resize shorter side to image_size, center crop image_size x image_size"


def resize_short(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    if min(h, w) == size:
        return img
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, (nw, nh), interpolation=interp)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return np.ascontiguousarray(img[top:top + size, left:left + size])


def eval_image(img: np.ndarray, size: int) -> np.ndarray:
    """The deterministic view of an image a model sees at prediction time (uint8, size x size x 3)."""
    return center_crop(resize_short(img, size), size)
