"""Small real images for tests (scikit-image's public-domain photos), written in class folders."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def photo(name: str = "chelsea", size: tuple[int, int] = (64, 48), offset: int = 0) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    h, w = img.shape[:2]
    crop = img[offset % (h // 4) : h - (offset * 7) % (h // 4), (offset * 13) % (w // 4) : w]
    return cv2.resize(np.ascontiguousarray(crop[:, :, :3]), size, interpolation=cv2.INTER_AREA)


def write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix if path.suffix != ".jpeg" else ".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def class_folder(root: Path, per_class: int = 3, classes=("cat", "coffee", "rocket"), size=(64, 48)) -> Path:
    names = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket", "astronaut": "astronaut"}
    for cls in classes:
        for i in range(per_class):
            ext = ".jpg" if i % 2 == 0 else ".png"
            write(root / cls / f"{cls}{i}{ext}", photo(names.get(cls, "chelsea"), size, offset=i + 1))
    return root
