"""Training curves as a PNG, drawn with OpenCV (no matplotlib)."""

from __future__ import annotations

import math
import os

import cv2
import numpy as np

from augkit.io.images import write_image

TRAIN_COLOR = (31, 119, 180)  # RGB
VAL_COLOR = (255, 127, 14)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(n + 2) if first + i * step <= hi + 1e-9]


def _text(img, s: str, org, scale=0.45, color=(60, 60, 60), thick=1) -> None:
    cv2.putText(img, s, (int(org[0]), int(org[1])), _FONT, scale, color, thick, cv2.LINE_AA)


def _panel(
    img, box, title: str, series: list[tuple[str, list[float | None], tuple]], y_range=None, percent=False
) -> None:
    x0, y0, x1, y1 = box
    left, right, top, bottom = x0 + 60, x1 - 15, y0 + 35, y1 - 45
    _text(img, title, (x0 + 60, y0 + 22), 0.6, (20, 20, 20), 1)
    values = [v for _, ys, _ in series for v in ys if v is not None and math.isfinite(v)]
    n = max((len(ys) for _, ys, _ in series), default=0)
    if y_range is None:
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        lo = min(0.0, lo)
        hi = hi * 1.05 if hi > 0 else 1.0
    else:
        lo, hi = y_range
    xmax = max(n, 2)

    def px(i, v):
        x = left + (right - left) * ((i + 1) - 1) / (xmax - 1)
        y = bottom - (bottom - top) * (v - lo) / (hi - lo)
        return int(round(x)), int(round(y))

    for t in _nice_ticks(lo, hi):
        y = px(0, t)[1]
        cv2.line(img, (left, y), (right, y), (230, 230, 230), 1, cv2.LINE_AA)
        _text(img, f"{t:.0%}" if percent else f"{t:g}", (x0 + 6, y + 4), 0.4)
    for t in _nice_ticks(1, xmax, 6):
        if float(t).is_integer():
            x = px(int(t) - 1, lo)[0]
            cv2.line(img, (x, bottom), (x, bottom + 4), (90, 90, 90), 1)
            _text(img, f"{int(t)}", (x - 4, bottom + 18), 0.4)
    cv2.rectangle(img, (left, top), (right, bottom), (90, 90, 90), 1)
    _text(img, "epoch", ((left + right) // 2 - 20, y1 - 8), 0.45)
    for k, (name, ys, color) in enumerate(series):
        pts = [px(i, v) for i, v in enumerate(ys) if v is not None and math.isfinite(v)]
        if not pts:
            continue
        if len(pts) > 1:
            cv2.polylines(img, [np.array(pts, np.int32)], False, color, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 3, color, -1, cv2.LINE_AA)
        lx = right - 120
        ly = top + 18 + 18 * k
        cv2.line(img, (lx, ly - 4), (lx + 20, ly - 4), color, 2, cv2.LINE_AA)
        _text(img, name, (lx + 26, ly), 0.45)


def plot_curves(rows: list[dict], path: str | os.PathLike, width: int = 1000, height: int = 380) -> None:
    """Loss (left) and accuracy (right) per epoch for train and val; written atomically."""
    img = np.full((height, width, 3), 255, np.uint8)

    def col(key):
        return [r.get(key) if r.get(key) not in ("", None) else None for r in rows]

    half = width // 2
    _panel(
        img,
        (0, 0, half, height),
        "loss",
        [("train", col("train_loss"), TRAIN_COLOR), ("val", col("val_loss"), VAL_COLOR)],
    )
    _panel(
        img,
        (half, 0, width, height),
        "accuracy",
        [("train", col("train_acc"), TRAIN_COLOR), ("val", col("val_acc"), VAL_COLOR)],
        y_range=(0.0, 1.0),
        percent=True,
    )
    write_image(img, path)
