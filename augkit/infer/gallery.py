"""The most confident mistakes of an evaluation as one picture (``augkit evaluate --gallery``).

The mistakes a model is surest of are the ones worth looking at first: a wrong label in the
data, two classes that really look alike, or a shortcut the model learnt. Each tile is the
image (decoded by the checkpoint's decode policy, fitted in a square), framed in red, with its
file name, the true label, the predicted one and its probability. Drawn with OpenCV only, like the confusion
matrix; no torch.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from augkit.errors import AugkitError, ImageError
from augkit.io.images import read_image, write_image

#: tiles drawn at most (the report lists up to :data:`MAX_MISTAKES`)
GALLERY_TILES = 24
MAX_MISTAKES = 50
THUMB = 160  # px, the side of each image's square
COLUMNS = 6
FRAME = (220, 0, 0)  # RGB: the red frame of each tile (tests count tiles by it)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT_H = 62  # three lines of text under each thumbnail: file name, true label, prediction
_PAD = 10
_LINE = 22  # px per title line


def confident_mistakes(
    probs: np.ndarray, y: np.ndarray, paths: list[str], classes: list[str], limit: int = MAX_MISTAKES
) -> list[dict]:
    """The wrong predictions, most confident first: path, true and predicted label, probability."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y)
    conf = probs[wrong, pred[wrong]]
    order = wrong[np.argsort(-conf, kind="stable")][:limit]
    return [
        {
            "path": paths[i],
            "true": classes[int(y[i])],
            "predicted": classes[int(pred[i])],
            "prob": float(probs[i, pred[i]]),
            "prob_true": float(probs[i, y[i]]),
        }
        for i in order
    ]


def _thumb(path: str) -> np.ndarray:
    """The image fitted into a THUMB x THUMB white square (grey with a cross if it cannot be read)."""
    box = np.full((THUMB, THUMB, 3), 255, np.uint8)
    try:
        img = read_image(path)
    except ImageError:
        box[:] = 200
        cv2.line(box, (0, 0), (THUMB - 1, THUMB - 1), (120, 120, 120), 2)
        return box
    h, w = img.shape[:2]
    s = THUMB / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST)
    y0, x0 = (THUMB - nh) // 2, (THUMB - nw) // 2
    box[y0 : y0 + nh, x0 : x0 + nw] = small[..., :3]
    return box


def _fit(text: str, width: int, scale: float) -> str:
    """``text`` cut to ``width`` px; a long name keeps its start and its end (``IMG_20~1234.jpg``)."""
    if cv2.getTextSize(text, _FONT, scale, 1)[0][0] <= width:
        return text
    head, tail = text[: len(text) // 2], text[len(text) // 2 :]
    while (head or tail) and cv2.getTextSize(head + "~" + tail, _FONT, scale, 1)[0][0] > width:
        if len(head) >= len(tail):
            head = head[:-1]
        else:
            tail = tail[1:]
    return head + "~" + tail


def _wrap(text: str, width: int, scale: float) -> list[str]:
    """``text`` in lines of at most ``width`` px, broken at spaces (a word too long is cut)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and cv2.getTextSize(lines[-1] + " " + word, _FONT, scale, 1)[0][0] <= width:
            lines[-1] += " " + word
        else:
            lines.append(_fit(word, width, scale))
    return lines


def draw_gallery(mistakes: list[dict], title: str, *, tiles: int = GALLERY_TILES) -> np.ndarray:
    """An RGB picture of the first ``tiles`` mistakes (as :func:`confident_mistakes` lists them):
    each tile named by its file, the title wrapped (never cut)."""
    shown = mistakes[:tiles]
    cols = max(1, min(COLUMNS, len(shown)))
    rows = max(1, -(-len(shown) // cols))
    tile_w, tile_h = THUMB + 2 * _PAD, THUMB + _TEXT_H + 2 * _PAD
    w = max(600, cols * tile_w + _PAD)
    title_lines = _wrap(title, w - 20, 0.55)
    top = 16 + _LINE * len(title_lines)
    img = np.full((top + rows * tile_h + _PAD, w, 3), 255, np.uint8)
    for i, line in enumerate(title_lines):
        cv2.putText(img, line, (10, 26 + _LINE * i), _FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    if not shown:
        cv2.putText(img, "no mistakes", (10, top + 30), _FONT, 0.6, (0, 110, 0), 1, cv2.LINE_AA)
    for k, m in enumerate(shown):
        x0 = _PAD + (k % cols) * tile_w
        y0 = top + (k // cols) * tile_h
        img[y0 : y0 + THUMB, x0 : x0 + THUMB] = _thumb(m["path"])
        cv2.rectangle(img, (x0 - 2, y0 - 2), (x0 + THUMB + 1, y0 + THUMB + 1), FRAME, 2)
        lines = (os.path.basename(m["path"]), f"true: {m['true']}", f"pred: {m['predicted']} {m['prob']:.0%}")
        for j, (text, ink) in enumerate(zip(lines, ((60, 60, 60), (0, 90, 0), (160, 0, 0)))):
            cv2.putText(img, _fit(text, THUMB, 0.45), (x0, y0 + THUMB + 18 + 18 * j), _FONT, 0.45, ink, 1, cv2.LINE_AA)
    return img


def write_gallery(report: dict, path: str | os.PathLike, *, tiles: int = GALLERY_TILES) -> int:
    """Draw the report's most confident mistakes to ``path`` (atomically); returns the tiles drawn."""
    mistakes = report.get("mistakes", [])
    wrong = report["counts"]["evaluated"] - round(report["accuracy"]["tta"] * report["counts"]["evaluated"])
    title = (
        f"most confident mistakes ({report['confusion']['predictions']}): {min(tiles, len(mistakes))} "
        f"of {wrong} wrong of {report['counts']['evaluated']}"
    )
    try:
        write_image(draw_gallery(mistakes, title, tiles=tiles), path)
    except OSError as exc:
        raise AugkitError(f"could not write {path}: {exc.strerror or exc} (no partial file was left)") from None
    return min(tiles, len(mistakes))
