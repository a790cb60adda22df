"""A few hundred ~500x375 real-photo JPEGs for benchmarks, cut from scikit-image's public-domain photos."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def make_photos(root: Path, count: int = 300, size: tuple[int, int] = (500, 375), classes: int = 3) -> Path:
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.immunohistochemistry()]
    rng = np.random.default_rng(0)
    for i in range(count):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        img = cv2.resize(src[y:y + ch, x:x + cw], size, interpolation=cv2.INTER_AREA)
        out = root / f"class{i % classes}" / f"img{i:04d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return root
