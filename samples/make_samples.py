"""Write the sample image folder (samples/<class>/*.jpg) from scikit-image's bundled photos.

Each class is one photo from ``skimage.data``; its images are fixed crops of different
regions and scales of that photo, shrunk (never enlarged) with area averaging and saved as JPEG quality 90.
Nothing is random, so running this again gives the same pixels (the JPEG bytes can differ
only if OpenCV's JPEG encoder differs).

Usage (needs the test extra, for scikit-image)::

    python samples/make_samples.py            # writes next to this script
    python samples/make_samples.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import skimage.data

JPEG_QUALITY = 90

# class -> (skimage.data function, [(name, (x0, y0, x1, y1) as fractions of width/height, long side px)])
SAMPLES: dict[str, tuple[str, list[tuple[str, tuple[float, float, float, float], int]]]] = {
    "cat": (
        "chelsea",
        [
            ("full", (0.00, 0.00, 1.00, 1.00), 300),
            ("face", (0.15, 0.10, 0.85, 0.95), 260),
            ("closeup", (0.25, 0.20, 0.75, 0.90), 220),
            ("right", (0.45, 0.10, 1.00, 0.95), 240),
            ("tall", (0.30, 0.00, 0.80, 1.00), 260),
        ],
    ),
    "coffee": (
        "coffee",
        [
            ("full", (0.00, 0.00, 1.00, 1.00), 320),
            ("cup", (0.25, 0.00, 0.75, 0.60), 260),
            ("cup-spoon", (0.30, 0.05, 0.75, 0.85), 280),
            ("saucer-left", (0.10, 0.10, 0.60, 1.00), 240),
            ("saucer-right", (0.35, 0.00, 0.85, 0.80), 260),
        ],
    ),
    "rocket": (
        "rocket",
        [
            ("full", (0.00, 0.00, 1.00, 1.00), 320),
            ("tower", (0.38, 0.20, 0.62, 1.00), 300),
            ("nose", (0.35, 0.15, 0.65, 0.70), 220),
            ("pad", (0.20, 0.10, 0.80, 0.90), 280),
            ("lights", (0.25, 0.50, 0.75, 1.00), 260),
        ],
    ),
    "astronaut": (
        "astronaut",
        [
            ("full", (0.00, 0.00, 1.00, 1.00), 280),
            ("face", (0.25, 0.00, 0.65, 0.45), 220),
            ("upper-body", (0.10, 0.00, 0.75, 0.70), 260),
            ("suit", (0.00, 0.20, 0.70, 1.00), 280),
            ("shoulders", (0.15, 0.00, 0.70, 0.55), 240),
        ],
    ),
}


def crop_resize(image: np.ndarray, box: tuple[float, float, float, float], long_side: int) -> np.ndarray:
    """Crop a fractional box and shrink it (area averaging) so the longer side is ``long_side``."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)
    crop = image[y0:y1, x0:x1]
    ch, cw = crop.shape[:2]
    scale = long_side / max(ch, cw)
    if scale > 1:
        raise ValueError(f"crop {box} is {cw}x{ch}: smaller than {long_side} px, it would be upscaled")
    size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
    return cv2.resize(crop, size, interpolation=cv2.INTER_AREA)


def write_jpeg(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())


def main(out_dir: Path) -> None:
    total = 0
    for cls, (source, crops) in SAMPLES.items():
        image = getattr(skimage.data, source)()
        folder = out_dir / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i, (name, box, long_side) in enumerate(crops, 1):
            path = folder / f"{cls}_{i:02d}_{name}.jpg"
            write_jpeg(path, crop_resize(image, box, long_side))
            total += path.stat().st_size
            print(f"{path.relative_to(out_dir)}  {path.stat().st_size // 1024} KiB")
    print(f"{sum(len(c) for _, c in SAMPLES.values())} images, {total // 1024} KiB")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
