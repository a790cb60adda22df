"""The registry of labelled dataset formats, layout detection, and what every format shares.

A format is a :class:`LabelFormat` subclass registered with :func:`register_format` (one module per
format: :mod:`augkit.labels.yolo`, :mod:`~augkit.labels.coco`, :mod:`~augkit.labels.voc`,
:mod:`~augkit.labels.masks`). :data:`FORMATS` maps a name to its instance; the built-in modules are
imported by name (:data:`BUILTIN_FORMATS`) the first time the registry is used, as the CLI's command
table does, so this module does not import the formats that import it.

Layout detection (:func:`detect_kind`): each format says whether a folder looks like its own. A folder
that looks like none is a classification folder (``None``); one that looks like several is
ambiguous and needs ``--labels``. :func:`open_dataset` detects (or takes) the kind and scans.

Problems with labels are :class:`LabelError` (an :class:`~augkit.errors.ImageError`, so augment reports a
bad label file the way it reports a bad image): the file, the 1-based line where the format has lines
(YOLO rows, VOC XML elements), a short machine-readable ``reason`` (:data:`REASONS`) and a detail.

Coordinates a little outside the image (float noise such as ``1.0000001``, rounding to the pixel
grid) are clipped silently: up to :data:`TOLERANCE_PX` pixels beyond an edge. Further out is
"coordinate out of range".
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from augkit.errors import ImageError, UsageError
from augkit.io.scan import is_ignored, is_image_name
from augkit.labels.model import DatasetInfo, Item, Labels

#: modules of augkit.labels that register the built-in formats, in detection order
BUILTIN_FORMATS = ("yolo", "coco", "voc", "masks")
#: how far (pixels) a coordinate may lie outside the image and still be clipped silently
TOLERANCE_PX = 0.5
#: the reasons a :class:`LabelError` carries (``augkit labels check`` counts by them)
REASONS = {
    "unreadable label file": "the label file cannot be read or parsed (bad JSON/XML/YAML/PNG)",
    "bad label line": "a row with the wrong number of values, or values that are not numbers",
    "missing label file": "an image whose format requires a label file (VOC XML, mask PNG) has none",
    "orphan label file": "a label file without an image",
    "missing image": "the labels name an image file that does not exist",
    "orphan image": "an image in the dataset's image folder that the labels do not list (COCO)",
    "class id out of range": "a class id (or mask value) beyond the dataset's names",
    "unknown class": "a class name or COCO category id that the dataset does not declare",
    "coordinate out of range": "a coordinate outside the image by more than the tolerance",
    "degenerate box": "a box with no width or no height once clipped to the image",
    "polygon too short": "a polygon with fewer than 3 points",
    "keypoint count": "an object with a number of keypoint values other than kpt_shape says",
    "image size mismatch": "the width/height the labels state differ from the image file's",
    "duplicate id": "an image, annotation or category id (or image file name) used twice",
    "unknown image id": "a COCO annotation whose image_id no image has",
}


class LabelError(ImageError):
    """A problem with a label file: ``path`` (the label file), ``reason`` (one of :data:`REASONS`),
    ``detail`` and ``line`` (1-based, None where the format has no lines)."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str = "", line: int | None = None):
        super().__init__(path, reason, detail)
        self.line = line
        where = f"{path}:{line}" if line is not None else f"{path}"
        self.args = (f"{where}: {reason}" + (f" ({detail})" if detail else ""),)

    def __reduce__(self):
        return (_rebuild_label_error, (self.path, self.reason, self.detail, self.line), self.__dict__)


def _rebuild_label_error(path: str, reason: str, detail: str, line: int | None) -> LabelError:
    return LabelError(path, reason, detail, line)


class LabelFormat:
    """One labelled dataset format: detect its layout, index it, read and write one image's labels.

    Subclasses set :attr:`name` and implement :meth:`detect`, :meth:`scan`, :meth:`parse` and
    :meth:`write`; :meth:`finish` writes dataset-level files (YOLO ``data.yaml``, the COCO JSON);
    :meth:`check` finds dataset-level problems (orphans, duplicates, missing images).
    """

    name: str = ""
    #: what the layout looks like, for "does not look like" messages and ``--help``
    layout: str = ""

    def detect(self, root: Path) -> bool:
        raise NotImplementedError

    def scan(self, root: Path) -> DatasetInfo:
        """Index the dataset (its names, splits and items) without reading every label."""
        raise NotImplementedError

    def parse(self, info: DatasetInfo, item: Item) -> tuple[Labels, list[LabelError]]:
        """The item's labels and every problem found in them (objects with a problem are left out).
        A label file that cannot be read at all raises :class:`LabelError`."""
        raise NotImplementedError

    def read(self, info: DatasetInfo, item: Item) -> Labels:
        """The item's labels; raises the first problem as :class:`LabelError` (the detail counts the rest).
        An image without a label file where the format allows it (YOLO) is a background image."""
        labels, problems = self.parse(info, item)
        if problems:
            first = problems[0]
            more = f"; {len(problems) - 1} more problem(s): run `augkit labels check`" if len(problems) > 1 else ""
            raise LabelError(first.path, first.reason, first.detail + more, first.line)
        return labels

    def label_paths(self, info: DatasetInfo, item: Item) -> list[Path]:
        """The files that hold the item's labels (copied or linked with the image when a split is not augmented)."""
        return [item.label_file] if item.label_file is not None and item.label_file.exists() else []

    def image_rel(self, info: DatasetInfo, item: Item) -> str:
        """Where the item's image lies relative to the dataset root (DST mirrors it)."""
        return item.image.relative_to(info.root).as_posix()

    def write(
        self, info: DatasetInfo, dst: Path, item: Item, image_rel: str, labels: Labels, size: tuple[int, int]
    ) -> dict:
        """Write the labels of the image written at ``dst / image_rel`` (``size``: its width, height);
        returns a small JSON-able record for :meth:`finish`."""
        raise NotImplementedError

    def finish(self, info: DatasetInfo, dst: Path, records: list[dict]) -> None:
        """Write the dataset-level files of DST from the records of :meth:`write` (default: none)."""

    def check(self, info: DatasetInfo) -> list[LabelError]:
        """Dataset-level problems: orphan label files, missing images, duplicate ids (default: none)."""
        return []


class _Registry(dict):
    """A dict of formats that imports the built-in format modules on first use."""

    _loaded = False

    def _load(self) -> None:
        if not _Registry._loaded:
            _Registry._loaded = True
            for name in BUILTIN_FORMATS:  # by name: those modules import this one
                importlib.import_module(f"augkit.labels.{name}")
            # one order whatever was imported first: the built-ins as listed, then others by name
            order = sorted(dict.items(self), key=lambda kv: (_builtin_rank(kv[0]), kv[0]))
            dict.clear(self)
            dict.update(self, order)

    def __getitem__(self, key: str) -> LabelFormat:
        self._load()
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self._load()
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        self._load()
        return super().__iter__()

    def __len__(self) -> int:
        self._load()
        return super().__len__()

    def get(self, key: str, default: Any = None) -> Any:
        self._load()
        return super().get(key, default)

    def keys(self):
        self._load()
        return super().keys()

    def values(self):
        self._load()
        return super().values()

    def items(self):
        self._load()
        return super().items()


def _builtin_rank(name: str) -> int:
    return BUILTIN_FORMATS.index(name) if name in BUILTIN_FORMATS else len(BUILTIN_FORMATS)


#: name -> format instance: the built-ins in :data:`BUILTIN_FORMATS` order, then others by name
FORMATS: dict[str, LabelFormat] = _Registry()


def register_format(cls: type[LabelFormat]) -> type[LabelFormat]:
    """Class decorator: register an instance of ``cls`` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    dict.__setitem__(FORMATS, cls.name, cls())
    return cls


def list_formats() -> list[str]:
    return list(FORMATS)


def get_format(name: str) -> LabelFormat:
    """The format called ``name``; :class:`UsageError` with "did you mean" for an unknown one."""
    if name in FORMATS:
        return FORMATS[name]
    if name == "folders":
        raise UsageError("--labels folders is a classification folder (class sub-folders), not a labelled format")
    close = difflib.get_close_matches(str(name), list(FORMATS), n=2, cutoff=0.5)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise UsageError(f"unknown label format {name!r} (allowed: {', '.join(FORMATS)}, folders){hint}")


def detect_kind(src: Path) -> str | None:
    """The kind of labelled dataset ``src`` looks like, or None (a classification folder).

    Raises :class:`UsageError` when it looks like several kinds (pass ``--labels KIND``)."""
    src = Path(src)
    if not src.is_dir():
        return None
    found = [name for name, fmt in FORMATS.items() if fmt.detect(src)]
    if len(found) > 1:
        raise UsageError(
            f"{src}: looks like more than one kind of labelled dataset ({', '.join(found)}); "
            f"choose one with --labels {'|'.join(found)}"
        )
    return found[0] if found else None


def open_dataset(src: Path, kind: str | None = None) -> DatasetInfo:
    """Detect (or take) the kind of ``src`` and index it. :class:`UsageError` (exit 2) for a folder that
    is not there, looks like no labelled dataset, looks like several, or not like the forced kind."""
    src = Path(src)
    if not src.exists():
        raise UsageError(f"{src}: folder not found")
    if not src.is_dir():
        raise UsageError(f"{src}: not a folder")
    if kind is None:
        kind = detect_kind(src)
        if kind is None:
            layouts = "; ".join(f"{n}: {f.layout}" for n, f in FORMATS.items())
            raise UsageError(f"{src}: does not look like a labelled dataset (looked for {layouts})")
    fmt = get_format(kind)
    if not fmt.detect(src):
        raise UsageError(f"{src}: does not look like a {kind} dataset (expected {fmt.layout})")
    return fmt.scan(src)


# ============================================================================= helpers the formats share


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden files and OS litter skipped), sorted."""
    out = []
    for dirpath, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not is_ignored(d))
        out += [Path(dirpath) / f for f in files if is_image_name(f)]
    return sorted(out)


def list_files(folder: Path, suffix: str) -> list[Path]:
    """Files ending in ``suffix`` under ``folder`` (recursive, hidden skipped), sorted."""
    out = []
    for dirpath, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not is_ignored(d))
        out += [Path(dirpath) / f for f in files if not is_ignored(f) and f.lower().endswith(suffix)]
    return sorted(out)


def image_size_of(path: Path) -> tuple[int, int]:
    """(width, height) of an image as augkit decodes it (JPEG EXIF orientation applied), from its header.
    :class:`ImageError` when it is missing or not an image."""
    from PIL import Image  # deferred: the header reader, only where labels need a size

    if not Path(path).is_file():
        raise ImageError(path, "not found")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.format == "JPEG" and im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w  # rotated by 90 degrees when decoded
    except Image.DecompressionBombError as exc:
        raise ImageError(path, "too large", str(exc)) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(path, "not an image", str(exc)) from None
    return w, h


def fit_range(values: ArrayLike, hi: float, tol: float = TOLERANCE_PX) -> np.ndarray | None:
    """``values`` clipped to [0, hi] when none lies more than ``tol`` outside; None (out of range) otherwise.
    NaN and infinity are out of range."""
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)) or np.any(v < -tol) or np.any(v > hi + tol):
        return None
    return np.clip(v, 0.0, hi)


def polygon_area(poly: np.ndarray) -> float:
    """The shoelace area of a (K, 2) polygon."""
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def check_item_size(item: Item, size: tuple[int, int], label_path: Path | None = None) -> LabelError | None:
    """The "image size mismatch" problem when the labels state a size (COCO, VOC) other than the decoded
    ``size`` (width, height), else None. Augment can call it with the size it decoded."""
    if item.size is None or tuple(item.size) == tuple(size):
        return None
    path = label_path or item.label_file or item.image
    return LabelError(
        path,
        "image size mismatch",
        f"{item.image.name}: labels say {item.size[0]}x{item.size[1]}, the image is {size[0]}x{size[1]}",
    )


def read_names_file(root: Path) -> list[str] | None:
    """Class names from ``classes.txt``/``labels.txt``/``names.txt`` in ``root`` (one per line), if any."""
    for name in ("classes.txt", "labels.txt", "names.txt"):
        p = root / name
        if p.is_file():
            try:
                text = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise LabelError(p, "unreadable label file", str(exc)) from None
            return [line.strip() for line in text.splitlines() if line.strip()]
    return None
