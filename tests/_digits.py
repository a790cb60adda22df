"""scikit-learn's handwritten digits (shipped with the package; 8x8, 16 grey levels), upscaled and
written as an image folder: real images for the Dataset and training tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def digit_images(digit: int, count: int, size: int = 32, start: int = 0) -> list[np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    picked = d.images[d.target == digit][start : start + count]
    out = []
    for img in picked:
        g = cv2.resize((img * (255 / 16)).astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
        out.append(cv2.cvtColor(g, cv2.COLOR_GRAY2RGB))
    return out


def write_png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def digits_folder(root: Path, digits=(0, 1, 2), per_class: int = 8, size: int = 32, start: int = 0) -> Path:
    """root/d<k>/<k>_<i>.png (odd images as .jpg), ``per_class`` images of each digit."""
    for k in digits:
        for i, img in enumerate(digit_images(k, per_class, size, start)):
            write_png(root / f"d{k}" / f"{k}_{i:02d}{'.jpg' if i % 2 else '.png'}", img)
    return root
