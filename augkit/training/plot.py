"""Training curves and the learning-rate sweep as PNGs, drawn with OpenCV (no matplotlib)."""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence

import cv2
import numpy as np

from augkit.io.images import write_image

TRAIN_COLOR = (31, 119, 180)  # RGB
VAL_COLOR = (255, 127, 14)
EMA_COLOR = (44, 160, 44)
LR_COLOR = (148, 103, 189)
CHOICE_COLOR = (214, 39, 40)
BEST_COLOR = (0, 130, 60)  # the best epoch's mark
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


def _log10(ys: list[float | None]) -> list[float | None]:
    return [math.log10(v) if v is not None and v > 0 else None for v in ys]


def _panel(
    img,
    box,
    title: str,
    series: list[tuple[str, list[float | None], tuple]],
    y_range=None,
    percent=False,
    log=False,
    marks: Sequence[tuple[int, str, tuple]] = (),
) -> None:
    """One chart of per-epoch series; ``log``: a log10 y axis (values <= 0 are left out). The
    legend sits in a strip above the chart, never over the data; ``marks``: (epoch, label, color)
    drawn as vertical lines (the best epoch, an early stop)."""
    x0, y0, x1, y1 = box
    left, right, top, bottom = x0 + 60, x1 - 15, y0 + 55, y1 - 45
    _text(img, title, (x0 + 60, y0 + 22), 0.6, (20, 20, 20), 1)
    if log:
        series = [(name, _log10(ys), color) for name, ys, color in series]
    values = [v for _, ys, _ in series for v in ys if v is not None and math.isfinite(v)]
    n = max((len(ys) for _, ys, _ in series), default=0)
    if log:
        lo, hi = (math.floor(min(values)), math.ceil(max(values))) if values else (-4.0, -2.0)
        hi = hi if hi > lo else lo + 1
    elif y_range is None:
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

    for t in range(int(lo), int(hi) + 1) if log else _nice_ticks(lo, hi):
        y = px(0, t)[1]
        cv2.line(img, (left, y), (right, y), (230, 230, 230), 1, cv2.LINE_AA)
        label = f"1e{t}" if log else f"{t:.0%}" if percent else f"{t:g}"
        _text(img, label, (x0 + 6, y + 4), 0.4)
    for t in _nice_ticks(1, xmax, 6):
        if float(t).is_integer():
            x = px(int(t) - 1, lo)[0]
            cv2.line(img, (x, bottom), (x, bottom + 4), (90, 90, 90), 1)
            _text(img, f"{int(t)}", (x - 4, bottom + 18), 0.4)
    cv2.rectangle(img, (left, top), (right, bottom), (90, 90, 90), 1)
    _text(img, "epoch", ((left + right) // 2 - 20, y1 - 8), 0.45)
    for epoch, label, color in marks:
        if 1 <= epoch <= xmax:
            x = px(epoch - 1, lo)[0]
            for ya in range(top, bottom, 8):  # dashed
                cv2.line(img, (x, ya), (x, min(ya + 4, bottom)), color, 1, cv2.LINE_8)  # exact color: findable
            _text(img, label, (min(x + 3, right - 8 * len(label)), bottom - 6), 0.4, color)
    lx, ly = left, y0 + 42  # the legend: one row between the title and the chart
    for name, ys, color in series:
        pts = [px(i, v) for i, v in enumerate(ys) if v is not None and math.isfinite(v)]
        if not pts:
            continue
        if len(pts) > 1:
            cv2.polylines(img, [np.array(pts, np.int32)], False, color, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 3, color, -1, cv2.LINE_AA)
        cv2.line(img, (lx, ly - 4), (lx + 20, ly - 4), color, 2, cv2.LINE_AA)
        _text(img, name, (lx + 26, ly), 0.45)
        lx += 40 + cv2.getTextSize(name, _FONT, 0.45, 1)[0][0]


def plot_curves(
    rows: list[dict],
    path: str | os.PathLike,
    width: int = 1200,
    height: int = 400,
    *,
    best_epoch: int | None = None,
    stopped: str | None = None,
) -> None:
    """Loss (log scale: epoch 1 no longer flattens the rest) and accuracy per epoch for train and
    val (and the EMA weights' val with ``--ema``), and the head's learning rate at the first and
    last step of each epoch (log scale); the best epoch (what best.pt holds) and an early stop
    (``stopped``: the reason) marked; written atomically."""
    img = np.full((height, width, 3), 255, np.uint8)
    marks = [(int(best_epoch), f"best {int(best_epoch)}", BEST_COLOR)] if best_epoch else []
    if stopped and stopped.startswith("early stop") and rows:
        marks.append((len(rows), "early stop", CHOICE_COLOR))

    def col(key):
        return [r.get(key) if r.get(key) not in ("", None) else None for r in rows]

    def ema(key, name):  # only when the run averaged weights
        ys = col(key)
        return [(name, ys, EMA_COLOR)] if any(v is not None for v in ys) else []

    third = width // 3
    _panel(
        img,
        (0, 0, third, height),
        "loss (log scale)",
        [
            ("train", col("train_loss"), TRAIN_COLOR),
            ("val", col("val_loss"), VAL_COLOR),
            *ema("ema_val_loss", "val EMA"),
        ],
        log=True,
        marks=marks,
    )
    _panel(
        img,
        (third, 0, 2 * third, height),
        "accuracy",
        [("train", col("train_acc"), TRAIN_COLOR), ("val", col("val_acc"), VAL_COLOR), *ema("ema_val_acc", "val EMA")],
        y_range=(0.0, 1.0),
        percent=True,
        marks=marks,
    )
    first, last = col("lr_first"), col("lr_last")
    if not any(v is not None for v in first):  # metrics written before per-step schedules
        first, last = col("lr_head"), []
    _panel(
        img,
        (2 * third, 0, width, height),
        "learning rate (head)",
        [("first step", first, LR_COLOR), ("last step", last, CHOICE_COLOR)],
        log=True,
    )
    write_image(img, path)


def plot_lr_find(
    lrs: list[float],
    losses: list[float],
    smoothed: list[float],
    chosen: float,
    rule: str,
    path: str | os.PathLike,
    minimum: int | None = None,
    width: int = 800,
    height: int = 480,
) -> None:
    """The range test: loss against learning rate (log x), raw (grey) and smoothed (blue), the
    smoothed minimum (grey dot; shaded from the chosen rate up to it) and the chosen rate (red line
    and dot) with its value and the rule; written atomically."""
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, width - 20, 40, height - 80
    xs = [math.log10(v) for v in lrs]
    vals = [v for v in (*losses, *smoothed) if math.isfinite(v)]
    lo, hi = min(vals), max(vals)
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    xc = math.log10(chosen)
    xlo, xhi = math.floor(min(*xs, xc)), math.ceil(max(*xs, xc))
    xhi = xhi if xhi > xlo else xlo + 1

    def px(x, y):
        return (
            int(round(left + (right - left) * (x - xlo) / (xhi - xlo))),
            int(round(bottom - (bottom - top) * (y - lo) / (hi - lo))),
        )

    if minimum is not None:
        cv2.rectangle(img, (px(xc, hi)[0], top), (px(xs[minimum], hi)[0], bottom), (235, 245, 235), -1)
    for t in _nice_ticks(lo, hi):
        y = px(xlo, t)[1]
        cv2.line(img, (left, y), (right, y), (230, 230, 230), 1, cv2.LINE_AA)
        _text(img, f"{t:.3g}", (6, y + 4), 0.4)
    for t in range(xlo, xhi + 1):
        x = px(t, lo)[0]
        cv2.line(img, (x, bottom), (x, bottom + 4), (90, 90, 90), 1)
        _text(img, f"1e{t}", (x - 14, bottom + 18), 0.4)
    cv2.rectangle(img, (left, top), (right, bottom), (90, 90, 90), 1)
    _text(img, "learning rate", ((left + right) // 2 - 45, bottom + 38), 0.45)
    for ys, color, thick in ((losses, (190, 190, 190), 1), (smoothed, TRAIN_COLOR, 2)):
        pts = [px(x, min(max(y, lo), hi)) for x, y in zip(xs, ys) if math.isfinite(y)]
        if len(pts) > 1:
            cv2.polylines(img, [np.array(pts, np.int32)], False, color, thick, cv2.LINE_AA)
    if minimum is not None:
        cv2.circle(img, px(xs[minimum], smoothed[minimum]), 5, (120, 120, 120), -1, cv2.LINE_AA)
    cy = float(np.interp(xc, xs, smoothed)) if len(xs) > 1 else smoothed[0]
    cx = px(xc, cy)
    cv2.line(img, (cx[0], top), (cx[0], bottom), CHOICE_COLOR, 1, cv2.LINE_AA)
    cv2.circle(img, cx, 6, CHOICE_COLOR, -1, cv2.LINE_AA)
    _text(img, f"lr range test: chosen {chosen:.3g}", (left, 24), 0.6, (20, 20, 20))
    for k, line in enumerate(textwrap.wrap(f"rule: {rule}", 105)[:2]):
        _text(img, line, (10, height - 24 + 14 * k), 0.38)
    write_image(img, path)
