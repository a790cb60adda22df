"""Preview pictures: what a recipe does to a few source images, before anything runs.

The grid has one row per source image; the first column is the original, then either
``n`` random augmented versions (seeds ``seed .. seed+n-1``), or, with ``extremes=True``, every
step alone at the low and high ends of its parameter ranges. Every column is labelled.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from augkit.errors import ImageError, UsageError
from augkit.io.images import read_image, write_image
from augkit.io.scan import is_image_name, scan_folder
from augkit.labels.draw import draw_labels, scale_labels
from augkit.labels.formats import FORMATS, open_dataset
from augkit.labels.geometry import build_labelled
from augkit.labels.model import DatasetInfo, Item
from augkit.limits import DEFAULT_MAX_PIXELS
from augkit.offline.labelled import resolve_kind
from augkit.recipe.api import Recipe, build_compose, seed_random_state, step_extremes
from augkit.seeding import derive_seed

if TYPE_CHECKING:
    import albumentations as A

FONT = cv2.FONT_HERSHEY_SIMPLEX
#: Bounds on the grid, so a typo (--cell 100000, --versions 10000) cannot ask for gigabytes.
MAX_CELL = 1024
MAX_ROWS_COLS = 64
#: ``-r none``: the originals only, as ``train -r none`` and ``augment`` read them
NO_AUGMENTATION = Recipe("none", "no augmentation", [], None)


def pick_images(sources: Sequence[str | os.PathLike], count: int) -> list[Path]:
    """Images from files and folders: every file named explicitly (up to :data:`MAX_ROWS_COLS`), then
    up to ``count`` in all from the folders, taking classes in turn so each shows up."""
    named: list[Path] = []
    folders: list[Path] = []
    for s in sources:
        s = Path(s)
        if s.is_dir():
            folders.append(s)
        elif s.exists():  # a FIFO or device too: read_image refuses it unread, with the reason
            if not is_image_name(s.name):
                raise UsageError(f"{s}: not an image file name")
            named.append(s)
        else:
            raise UsageError(f"{s}: not found")
    if len(named) > MAX_ROWS_COLS:
        raise UsageError(f"{len(named)} files named: a preview shows at most {MAX_ROWS_COLS} rows")
    files = list(named)
    for s in folders:
        scan = scan_folder(s)
        by_class: dict[str, list[str]] = {}
        for rel, cls in scan.items:
            by_class.setdefault(cls, []).append(rel)
        queues = [list(v) for _, v in sorted(by_class.items())]
        while any(queues) and len(files) < max(count, len(named)):
            for q in queues:
                if q and len(files) < max(count, len(named)):
                    files.append(s / q.pop(0))
    if not files:
        raise UsageError("no images to preview in " + ", ".join(map(str, sources)))
    return files


def _thumb(img: np.ndarray, height: int) -> np.ndarray:
    h, w = img.shape[:2]
    width = max(1, round(w * height / h))
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if h > height else cv2.INTER_LINEAR)


def _wrap(text: str, width_px: int, scale: float) -> list[str]:
    words, lines, cur = text.split(), [], ""
    for w in words:
        trial = f"{cur} {w}".strip()
        if cv2.getTextSize(trial, FONT, scale, 1)[0][0] <= width_px or not cur:
            cur = trial
        else:
            lines.append(cur)
            cur = w
    return lines + ([cur] if cur else [])


def _label_strip(text: str, width: int, scale: float = 0.4) -> np.ndarray:
    # a name that is not valid UTF-8 (os.fsdecode surrogates) crashes OpenCV's text functions: escape it
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    lines = _wrap(text, width - 6, scale)
    lh = int(22 * scale / 0.4 * 0.75) + 4
    strip = np.full((lh * len(lines) + 6, width, 3), 255, np.uint8)
    for i, ln in enumerate(lines):
        cv2.putText(strip, ln, (3, lh * (i + 1)), FONT, scale, (20, 20, 20), 1, cv2.LINE_AA)
    return strip


def describe_applied(applied: list[dict], limit: int = 3) -> str:
    """What fired in one augmented version, short enough to print under a tile: each applied step's
    op and up to ``limit`` of its sampled numbers (``affine rotate=-3.6 scale=0.91; color ...``)."""
    if not applied:
        return "no step fired (unchanged)"
    parts = []
    for a in applied:
        nums = []
        for k, v in a.get("params", {}).items():
            if isinstance(v, dict) and set(v) == {"x", "y"} and v["x"] == v["y"]:
                v = v["x"]
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("fill", "p"):
                nums.append(f"{k}={v:.3g}")
            elif isinstance(v, str) and len(v) <= 16:
                nums.append(f"{k}={v}")
        parts.append(" ".join([a.get("op", "?")] + nums[:limit]))
    return "; ".join(parts)


def render_grid(
    rows: list[list[np.ndarray]],
    headers: list[str],
    row_labels: list[str],
    cell: int,
    captions: list[list[str]] | None = None,
) -> np.ndarray:
    """Lay out equally sized cells with column headers and a file name under each row's first cell;
    ``captions[r][j]`` (optional) is printed under cell j of row r (what fired in that version)."""
    pad = 4
    ncol = len(headers)
    head = [_label_strip(h, cell) for h in headers]
    hh = max(h.shape[0] for h in head)
    canvas_rows = []
    header_row = np.full((hh, ncol * (cell + pad) + pad, 3), 255, np.uint8)
    for j, h in enumerate(head):
        x = pad + j * (cell + pad)
        header_row[: h.shape[0], x : x + cell] = h
    canvas_rows.append(header_row)
    for r, cells in enumerate(rows):
        row = np.full((cell + pad, ncol * (cell + pad) + pad, 3), 255, np.uint8)
        for j, c in enumerate(cells):
            x = pad + j * (cell + pad)
            th = _fit(c, cell)
            y0, x0 = (cell - th.shape[0]) // 2, (cell - th.shape[1]) // 2
            row[y0 : y0 + th.shape[0], x + x0 : x + x0 + th.shape[1]] = th
        canvas_rows.append(row)
        if captions is not None:
            strips = [_label_strip(c, cell, 0.3) for c in captions[r]]
            sh = max(st.shape[0] for st in strips)
            cap = np.full((sh, row.shape[1], 3), 255, np.uint8)
            for j, st in enumerate(strips):
                x = pad + j * (cell + pad)
                cap[: st.shape[0], x : x + cell] = st[:, :cell]
            canvas_rows.append(cap)
        canvas_rows.append(_label_strip(row_labels[r], row.shape[1], 0.35))
    return np.vstack(canvas_rows)


def _fit(img: np.ndarray, cell: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = cell / max(h, w)
    return cv2.resize(
        img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    )


def preview(
    recipe: Recipe | None,
    sources: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    images: int = 4,
    versions: int = 6,
    seed: int = 0,
    extremes: bool = False,
    cell: int = 160,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    labels: str | None = None,
) -> Path:
    """Render the preview grid to ``output`` (PNG or JPEG); returns the path.

    A labelled dataset folder (detected, or ``labels`` = yolo, coco, voc, masks) is previewed with its
    labels drawn on the original and on every augmented tile (:func:`_preview_labelled`);
    ``labels="folders"`` treats a folder as class folders."""
    if recipe is None:  # -r none: no augmentation, the originals as train and augment read them
        recipe, versions, extremes = NO_AUGMENTATION, 0, False
    if not recipe.train and recipe is not NO_AUGMENTATION:
        raise UsageError(f"recipe {recipe.name!r} has no train section to preview")
    if not (0 <= versions <= MAX_ROWS_COLS and 1 <= images <= MAX_ROWS_COLS and 48 <= cell <= MAX_CELL):
        raise UsageError(
            f"--versions and --images must be 1-{MAX_ROWS_COLS} and --cell 48-{MAX_CELL} "
            f"(got {versions}, {images}, {cell})"
        )
    output = Path(output)
    if output.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise UsageError(f"{output}: preview output must end in .png, .jpg or .webp")
    kind = resolve_kind(sources[0], labels) if len(sources) == 1 and Path(sources[0]).is_dir() else None
    if kind is None and labels not in (None, "folders"):
        raise UsageError(f"--labels {labels}: give one dataset folder to preview (got {len(sources)} sources)")
    if kind is not None:
        return _preview_labelled(recipe, Path(sources[0]), kind, output, images, versions, seed, extremes, cell,
                                 max_pixels)  # fmt: skip
    files = pick_images(sources, images)
    if extremes:
        columns: list[tuple[str, A.Compose]] = []
        for step in recipe.train:
            for label, s in step_extremes(step):
                compose, _ = build_compose([s], recipe.border, recipe.fill)
                columns.append((f"{s.where.split(' ')[0]} {label}", compose))
        headers = ["original"] + [c[0] for c in columns]
    else:
        aug = recipe.build()
        headers = ["original"] + [f"seed {seed + k}" for k in range(versions)]
    rows: list[list[np.ndarray]] = []
    names: list[str] = []  # row labels: the source files
    captions: list[list[str]] = []
    for f in files:
        try:
            # min_side: camera JPEGs decode at 1/2-1/8 scale (DCT), still >= the preview's size
            img = read_image(f, max_pixels=max_pixels, min_side=cell * 2)
        except ImageError as exc:
            raise UsageError(str(exc)) from None
        img = _thumb(img, cell * 2) if img.shape[0] > cell * 2 else img  # augment at preview scale: fast
        cells = [img]
        if extremes:
            for k, (_, compose) in enumerate(columns):
                seed_random_state(compose, derive_seed(seed, f.name, k, salt="preview"))
                cells.append(compose(image=img)["image"])
        else:
            fired = [""]
            for k in range(versions):
                out, applied = aug(img, derive_seed(seed + k, f.name, 0, salt="preview"))
                cells.append(out)
                fired.append(describe_applied(applied))
            captions.append(fired)
        rows.append(cells)
        names.append(str(f))
    grid = render_grid(rows, headers, names, cell, captions=None if extremes else captions)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_image(grid, output, quality=92)
    return output


def _labelled_images(info: DatasetInfo, count: int) -> list[Item]:
    """Up to ``count`` images of a labelled dataset: the training split first (the one augmented),
    preferring images with objects."""
    order = sorted(info.splits, key=lambda s: (s != "train", list(info.splits).index(s)))
    items = [it for s in order for it in info.splits[s]]
    if not items:
        raise UsageError(f"{info.root}: the {info.kind} dataset has no images to preview")
    return items[:count]


def _preview_labelled(
    recipe: Recipe,
    src: Path,
    kind: str,
    output: Path,
    images: int,
    versions: int,
    seed: int,
    extremes: bool,
    cell: int,
    max_pixels: int | None,
) -> Path:
    """The grid of a labelled dataset: each tile shows the image with its labels drawn (boxes and class
    names, translucent polygons and masks, keypoints and skeleton), moved by the recipe as augment
    moves them."""
    info = open_dataset(src, kind)
    fmt = FORMATS[kind]
    with warnings.catch_warnings():  # a pixel-only step alone: albumentations notes it moves no keypoints
        warnings.filterwarnings("ignore", message="Got processor for keypoints")
        if extremes:
            columns = []
            for step in recipe.train:
                for label, s in step_extremes(step):
                    pipe = build_labelled(replace(recipe, train=[s]), info)
                    columns.append((f"{s.where.split(' ')[0]} {label}", pipe))
            headers = ["original"] + [c[0] for c in columns]
        else:
            pipeline = build_labelled(recipe, info)
            headers = ["original"] + [f"seed {seed + k}" for k in range(versions)]
    rows, names, captions = [], [], []
    for it in _labelled_images(info, images):
        try:
            img = read_image(it.image, max_pixels=max_pixels, min_side=cell * 2)
            lab = fmt.read(info, it)
        except ImageError as exc:  # LabelError too: the file and line
            raise UsageError(str(exc)) from None
        size = fmt.image_rel(info, it)
        if img.shape[0] > cell * 2:  # augment at preview scale: fast; labels scaled with it
            h, w = img.shape[:2]
            img = _thumb(img, cell * 2)
            lab = scale_labels(lab, img.shape[1] / w, img.shape[0] / h, (img.shape[1], img.shape[0]))
        cells, fired = [draw_labels(img, lab, info)], [""]
        for k in range(len(headers) - 1):
            if extremes:
                out, out_lab, _, _ = columns[k][1](img.copy(), lab, derive_seed(seed, size, k, salt="preview"))
            else:
                out, out_lab, _, applied = pipeline(img.copy(), lab, derive_seed(seed + k, size, 0, salt="preview"))
                fired.append(describe_applied(applied))
            cells.append(draw_labels(out, out_lab, info))
        rows.append(cells)
        captions.append(fired)
        n = len(lab.objects)
        names.append(f"{size} ({n} object{'' if n == 1 else 's'})" if lab.semantic is None else size)
    grid = render_grid(rows, headers, names, cell, captions=None if extremes else captions)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_image(grid, output, quality=92)
    return output
