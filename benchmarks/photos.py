"""A few hundred ~500x375 real-photo JPEGs for benchmarks, cut from scikit-image's public-domain photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def make_photos(
    root: Path,
    count: int = 300,
    size: tuple[int, int] = (500, 375),
    classes: int = 3,
    *,
    crop: tuple[float, float] = (0.6, 1.0),
    interpolation: int = cv2.INTER_AREA,
    quality: int = 90,
    sources: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry"),
) -> Path:
    """``count`` JPEGs of ``size``, each a random crop (a ``crop`` share of each side) of a photo."""
    from skimage import data

    photos = [getattr(data, name)() for name in sources]
    rng = np.random.default_rng(0)
    for i in range(count):
        src = photos[i % len(photos)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(*crop)), int(w * rng.uniform(*crop))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        img = cv2.resize(src[y : y + ch, x : x + cw], size, interpolation=interpolation)
        out = root / f"class{i % classes}" / f"img{i:04d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(out), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f"could not write {out}")
    return root
