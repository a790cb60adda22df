"""YOLO datasets, as Ultralytics lays them out and documents them (docs.ultralytics.com/datasets/detect,
/segment, /pose).

Layout: ``data.yaml`` (``names`` as a list or an ``{id: name}`` map, ``train``/``val``/``test`` as folders
or ``.txt`` lists of images, ``kpt_shape`` and ``flip_idx`` for pose; an optional ``path`` is the base
of the others, taken relative to the YAML's folder when relative) with ``images/<split>/`` and, for each
image, ``labels/<split>/<stem>.txt`` found by Ultralytics' rule (the last ``/images/`` of the image path
becomes ``/labels/``, the suffix ``.txt``). Without ``data.yaml``, ``images/`` + ``labels/`` is enough:
each sub-folder of ``images/`` is a split, and names come from ``classes.txt`` or, lacking one, from
the largest class id (``"0"``, ``"1"``, ...).

One row per object, values normalized to 0..1 by the image's width and height:

- detection ``cls cx cy w h``
- segmentation ``cls x1 y1 ... xn yn`` (3 points or more)
- pose ``cls cx cy w h`` followed by ``kpt_shape[0]`` keypoints of ``kpt_shape[1]`` values (``x y`` or
  ``x y v``; an unlabelled point is ``0 0`` / ``0 0 0``).

An image without a label file is a background image. On output each object keeps its row form; an
object whose polygon was cut in pieces is written as one outline joining the pieces by zero-width
bridges (as Ultralytics' own COCO converter does), and keypoints outside the image become ``0 0 0``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from augkit.errors import UsageError
from augkit.io.fileio import atomic_write_text
from augkit.io.scan import is_image_name
from augkit.labels.formats import (
    TOLERANCE_PX,
    LabelError,
    LabelFormat,
    fit_range,
    image_size_of,
    list_files,
    list_images,
    read_names_file,
    register_format,
)
from augkit.labels.model import DatasetInfo, Item, Labels, Obj, box_from_points
from augkit.recipe.yamlio import LineDict, load_yaml, plain

#: data.yaml keys that name splits, in the order they are listed
SPLIT_KEYS = ("train", "val", "test", "minival")
#: the dataset file names Ultralytics users give their YAML
YAML_NAMES = ("data.yaml", "dataset.yaml", "data.yml")


def label_path_for(image: str | os.PathLike) -> Path:
    """Ultralytics' ``img2label_paths``: the last ``/images/`` becomes ``/labels/``, the suffix ``.txt``
    (for a relative path too: ``images/train/a.jpg`` -> ``labels/train/a.txt``)."""
    s = os.fspath(image)
    rel = not os.path.isabs(s)
    if rel:
        s = os.sep + s
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    out = Path(sb.join(s.rsplit(sa, 1))).with_suffix(".txt")
    return Path(str(out)[1:]) if rel else out


def _yaml_file(root: Path) -> Path | None:
    return next((root / n for n in YAML_NAMES if (root / n).is_file()), None)


def _names(raw: Any, source: str, line: int | None) -> list[str]:
    if isinstance(raw, list):
        return [str(n) for n in raw]
    if isinstance(raw, dict):
        try:
            ids = sorted(int(k) for k in raw)
        except (TypeError, ValueError):
            ids = []
        if ids == list(range(len(raw))):
            return [str(raw[k] if k in raw else raw[str(k)]) for k in ids]
    raise UsageError(f"{source}:{line}: names must be a list or a map 0..n-1 -> name (got {raw!r:.80})")


def merge_parts(parts: list[np.ndarray]) -> np.ndarray:
    """One outline through several polygon parts: each part is entered at its point nearest the
    previous part and left and re-entered through the same point, so the bridges add no area."""
    parts = [p for p in parts if len(p)]
    if len(parts) <= 1:
        return parts[0] if parts else np.zeros((0, 2))
    links = []
    for a, b in zip(parts, parts[1:], strict=False):
        d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        links.append(np.unravel_index(int(d.argmin()), d.shape))

    def walk(k: int, entry: int) -> list[np.ndarray]:
        p, n = parts[k], len(parts[k])
        out = []
        for t in range(n + 1):
            idx = (entry + t) % n
            out.append(p[idx])
            if k + 1 < len(parts) and idx == links[k][0] and t < n:
                out += walk(k + 1, int(links[k][1]))
                out.append(p[idx])
        return out

    return np.array(walk(0, int(links[0][0]))[:-1])


@register_format
class YoloFormat(LabelFormat):
    name = "yolo"
    layout = "data.yaml, or images/<split>/ beside labels/<split>/*.txt"

    def detect(self, root: Path) -> bool:
        if _yaml_file(root) is not None:
            return True
        return (root / "images").is_dir() and (root / "labels").is_dir()

    # ------------------------------------------------------------------ scan

    def scan(self, root: Path) -> DatasetInfo:
        root = Path(root)
        yfile = _yaml_file(root)
        info = DatasetInfo(kind=self.name, root=root, names=[])
        split_src: dict[str, list[str]] = {}
        empty: list[tuple[str, str]] = []  # (split, entry) of data.yaml entries that gave no image
        if yfile is not None:
            doc = self._load_yaml(yfile)
            base = root
            if doc.get("path"):
                p = Path(str(doc["path"]))
                base = p if p.is_absolute() else (root / p)
                if not base.is_dir():
                    base = root  # Ultralytics' sample files say path: ../datasets/NAME, its own download folder
            for key in SPLIT_KEYS:
                val = doc.get(key)
                if val in (None, ""):
                    continue
                entries = [str(v) for v in (val if isinstance(val, list) else [val])]
                split_src[key] = entries
                items: list[Item] = []
                for e in entries:
                    found = self._split_items(base, e, key)
                    if not found:
                        empty.append((key, e))
                    items += found
                info.splits[key] = sorted(items, key=lambda it: str(it.image))
            if "names" in doc:
                info.names = _names(doc["names"], str(yfile), doc.line_of("names"))
            self._pose(info, doc, yfile)
            info.extra["yaml"] = {k: plain(v) for k, v in doc.items() if k not in ("path", "download")}
            info.extra["yaml_name"] = yfile.name
        else:
            images = root / "images"
            subs = sorted(d for d in images.iterdir() if d.is_dir() and not d.name.startswith("."))
            direct = [f for f in images.iterdir() if f.is_file() and is_image_name(f.name)]
            for d in [images] if direct or not subs else subs:
                split = "train" if d == images else d.name
                split_src[split] = [d.relative_to(root).as_posix()]
                info.splits[split] = self._split_items(root, split_src[split][0], split)
        info.extra["split_src"] = split_src
        info.extra["empty_entries"] = empty
        if not info.names:
            info.names = read_names_file(root) or read_names_file(root / "labels") or self._names_from_ids(info)
        return info

    def _load_yaml(self, yfile: Path) -> LineDict:
        try:
            text = yfile.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{yfile}: cannot read ({exc})") from None
        doc = load_yaml(text, source=str(yfile))
        if not isinstance(doc, LineDict):
            raise UsageError(f"{yfile}: must be a mapping with names and train/val paths")
        return doc

    def _pose(self, info: DatasetInfo, doc: LineDict, yfile: Path) -> None:
        if "kpt_shape" in doc:
            ks = doc["kpt_shape"]
            if not (isinstance(ks, list) and len(ks) == 2 and all(isinstance(v, int) for v in ks) and ks[1] in (2, 3)):
                raise UsageError(
                    f"{yfile}:{doc.line_of('kpt_shape')}: kpt_shape must be [keypoints, 2 or 3] (got {ks!r})"
                )
            info.kpt_shape = (int(ks[0]), int(ks[1]))
        if "flip_idx" in doc:
            fi = doc["flip_idx"]
            k = info.kpt_shape[0] if info.kpt_shape else None
            if not (isinstance(fi, list) and sorted(fi) == list(range(len(fi))) and (k is None or len(fi) == k)):
                raise UsageError(
                    f"{yfile}:{doc.line_of('flip_idx')}: flip_idx must be a permutation of 0..{(k or len(fi)) - 1}"
                    f" (got {fi!r:.80})"
                )
            info.flip_idx = [int(v) for v in fi]

    def _split_items(self, base: Path, entry: str, split: str) -> list[Item]:
        p = Path(entry) if Path(entry).is_absolute() else base / entry
        if not p.exists() and entry.startswith("../") and (base / entry[3:]).exists():
            p = base / entry[3:]  # Roboflow's exports say ../train/images; Ultralytics falls back the same way
        if p.suffix.lower() == ".txt" and p.is_file():
            images = []
            for line in p.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if not line:
                    continue
                q = Path(line)
                images.append(q if q.is_absolute() else Path(os.path.normpath(p.parent / line)))
        elif p.is_dir():
            images = list_images(p)
        else:
            return []  # a split folder that is not there: check() reports it
        items = []
        for img in images:
            lab = label_path_for(img)
            items.append(Item(image=img, split=split, label_file=lab if lab.is_file() else None))
        return items

    def _names_from_ids(self, info: DatasetInfo) -> list[str]:
        top = -1
        for it in info.items:
            if it.label_file is None:
                continue
            try:
                for line in it.label_file.read_text(encoding="utf-8").splitlines():
                    tok = line.split()
                    if tok:
                        top = max(top, int(float(tok[0])))
            except (OSError, UnicodeDecodeError, ValueError, OverflowError):
                continue  # parse() reports it
        return [str(i) for i in range(top + 1)]

    # ------------------------------------------------------------------ read

    def parse(self, info: DatasetInfo, item: Item) -> tuple[Labels, list[LabelError]]:
        if item.label_file is None:
            return Labels(), []
        path = item.label_file
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LabelError(path, "unreadable label file", str(exc)) from None
        W, H = item.size or image_size_of(item.image)
        objs, problems = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                objs.append(self._row(info, line, W, H))
            except _RowProblem as exc:
                problems.append(LabelError(path, exc.reason, exc.detail, n))
        return Labels(objects=objs), problems

    def _row(self, info: DatasetInfo, line: str, W: int, H: int) -> Obj:
        tok = line.split()
        try:
            vals = [float(t) for t in tok]
        except ValueError:
            raise _RowProblem("bad label line", f"not a number in {line.strip()[:60]!r}") from None
        c = vals[0]
        if not np.isfinite(c) or c != int(c):
            raise _RowProblem("bad label line", f"class {tok[0]!r} is not an integer")
        cls, rest = int(c), np.array(vals[1:])
        if cls < 0 or (info.names and cls >= len(info.names)):
            raise _RowProblem(
                "class id out of range", f"class {cls}; names has {len(info.names)} (0..{len(info.names) - 1})"
            )
        n = len(rest)
        if info.kpt_shape is not None:
            k, d = info.kpt_shape
            if n < 4:
                raise _RowProblem("bad label line", f"{n} values after the class; a pose row needs 4 + {k}x{d}")
            if n != 4 + k * d:
                got = (n - 4) / d
                raise _RowProblem("keypoint count", f"{got:g} keypoints ({n - 4} values) but kpt_shape is [{k}, {d}]")
            box = self._box(rest[:4], W, H)
            return Obj(cls, box, keypoints=self._keypoints(rest[4:].reshape(k, d), W, H))
        if n == 4:
            return Obj(cls, self._box(rest, W, H))
        if n % 2 or n == 0:
            raise _RowProblem("bad label line", f"{n} values after the class: 4 (a box) or x y pairs (a polygon)")
        if n < 6:
            raise _RowProblem("polygon too short", f"{n // 2} point(s); a polygon needs 3 or more")
        xy = rest.reshape(-1, 2)
        xs, ys = fit_range(xy[:, 0] * W, W), fit_range(xy[:, 1] * H, H)
        if xs is None or ys is None:
            raise _RowProblem("coordinate out of range", f"polygon outside 0..1: {_short(rest)}")
        pts = np.stack([xs, ys], 1)
        box = box_from_points(pts)
        if box[2] <= box[0] or box[3] <= box[1]:
            raise _RowProblem("degenerate box", f"polygon with no width or no height: {_short(rest)}")
        return Obj(cls, box, polygons=[pts])

    @staticmethod
    def _box(v: np.ndarray, W: int, H: int) -> np.ndarray:
        """A ``cx cy w h`` row in pixels (:func:`fit_range`'s rule, in plain floats: a label file is
        read for every image, and numpy's per-call cost on four numbers dominated it)."""
        cx, cy, w, h = (float(x) for x in v)
        if not all(math.isfinite(x) for x in (cx, cy, w, h)) or w < 0 or h < 0:
            raise _RowProblem("coordinate out of range", f"box {_short(v)}")
        x0, x1, y0, y1 = (cx - w / 2) * W, (cx + w / 2) * W, (cy - h / 2) * H, (cy + h / 2) * H
        tol = TOLERANCE_PX
        if x0 < -tol or x1 > W + tol or y0 < -tol or y1 > H + tol:
            raise _RowProblem("coordinate out of range", f"box {_short(v)} reaches outside 0..1")
        x0, x1, y0, y1 = max(x0, 0.0), min(x1, float(W)), max(y0, 0.0), min(y1, float(H))
        if x1 <= x0 or y1 <= y0:
            raise _RowProblem("degenerate box", f"box {_short(v)} has no width or no height")
        return np.array([x0, y0, x1, y1])

    @staticmethod
    def _keypoints(kp: np.ndarray, W: int, H: int) -> np.ndarray:
        out = np.zeros((len(kp), 3))
        for i, row in enumerate(kp):
            x, y = row[0], row[1]
            v = row[2] if len(row) == 3 else (2.0 if (x, y) != (0.0, 0.0) else 0.0)
            if v not in (0.0, 1.0, 2.0):
                raise _RowProblem("bad label line", f"keypoint {i} visibility {v:g} (allowed: 0, 1, 2)")
            if v == 0:
                continue  # not labelled: its coordinates mean nothing
            px, py = fit_range([x * W], W), fit_range([y * H], H)
            if px is None or py is None:
                raise _RowProblem("coordinate out of range", f"keypoint {i} at {x:g} {y:g} (outside 0..1)")
            out[i] = (px[0], py[0], v)
        return out

    # ------------------------------------------------------------------ write

    def image_rel(self, info: DatasetInfo, item: Item) -> str:
        try:
            return item.image.relative_to(info.root).as_posix()
        except ValueError:  # an image outside the root (an absolute path in data.yaml)
            return f"images/{item.split}/{item.image.name}"

    def write(
        self, info: DatasetInfo, dst: Path, item: Item, image_rel: str, labels: Labels, size: tuple[int, int]
    ) -> dict:
        label_rel = label_path_for(Path(image_rel)).as_posix()
        if not labels.objects and item.label_file is None:
            return {"split": item.split, "image": image_rel, "label": None, "objects": 0}
        W, H = size
        rows = [self._format_row(info, o, W, H) for o in labels.objects]
        out = dst / label_rel
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, "".join(r + "\n" for r in rows))
        return {"split": item.split, "image": image_rel, "label": label_rel, "objects": len(rows)}

    @staticmethod
    def _format_row(info: DatasetInfo, o: Obj, W: int, H: int) -> str:
        def f(vals) -> str:
            return " ".join(f"{v:.6f}" for v in vals)

        x0, y0, x1, y1 = np.clip(o.box, 0, [W, H, W, H])
        box = [(x0 + x1) / 2 / W, (y0 + y1) / 2 / H, (x1 - x0) / W, (y1 - y0) / H]
        if info.kpt_shape is not None:
            k, d = info.kpt_shape
            kp = o.keypoints if o.keypoints is not None else np.zeros((k, 3))
            vals = []
            for x, y, v in kp:
                if v <= 0 or not (0 <= x <= W and 0 <= y <= H):
                    vals += [0.0, 0.0, 0.0][:d]
                else:
                    vals += [x / W, y / H, v][:d]
            return f"{o.cls} {f(box)} " + " ".join(
                f"{v:.6f}" if j % d != 2 else f"{int(v)}" for j, v in enumerate(vals)
            )
        if o.polygons:
            pts = merge_parts(o.polygons) if len(o.polygons) > 1 else o.polygons[0]
            if len(pts) >= 3:
                return f"{o.cls} {f((np.clip(pts, 0, [W, H]) / [W, H]).ravel())}"
        return f"{o.cls} {f(box)}"

    def finish(self, info: DatasetInfo, dst: Path, records: list[dict]) -> None:
        doc: dict[str, Any] = dict(info.extra.get("yaml") or {})
        doc["names"] = doc.get("names") or dict(enumerate(info.names))
        if info.kpt_shape is not None:
            doc["kpt_shape"] = list(info.kpt_shape)
        if info.flip_idx is not None:
            doc["flip_idx"] = list(info.flip_idx)
        written: dict[str, list[str]] = {}
        for r in records:
            written.setdefault(r["split"], []).append(r["image"])
        srcs = info.extra.get("split_src", {})
        for split, items in info.splits.items():
            rels = written.get(split) or [self.image_rel(info, it) for it in items]
            if any(e.lower().endswith(".txt") for e in srcs.get(split, [])):
                atomic_write_text(dst / f"{split}.txt", "".join(f"./{r}\n" for r in sorted(rels)))
                doc[split] = f"{split}.txt"
            elif rels:
                doc[split] = Path(os.path.commonpath([str(Path(r).parent) for r in rels])).as_posix()
            elif srcs.get(split):
                doc[split] = srcs[split][0] if len(srcs[split]) == 1 else srcs[split]
        ordered = {k: doc[k] for k in SPLIT_KEYS if k in doc}
        ordered.update({k: v for k, v in doc.items() if k not in ordered})
        dst.mkdir(parents=True, exist_ok=True)
        name = info.extra.get("yaml_name", "data.yaml")
        atomic_write_text(dst / name, yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True))

    # ------------------------------------------------------------------ check

    def check(self, info: DatasetInfo) -> list[LabelError]:
        problems = []
        yname = info.extra.get("yaml_name")
        for split, e in info.extra.get("empty_entries", []):
            p = Path(e) if Path(e).is_absolute() else info.root / e
            what = "not found" if not p.exists() else "has no images"
            problems.append(LabelError(info.root / (yname or "images"), "missing image", f"{split}: {e} {what}"))
        expected = {it.label_file or label_path_for(it.image) for it in info.items}
        dirs = {p.parent for p in expected}
        found: set[Path] = set()
        for d in dirs:
            if d.is_dir():
                found |= {f for f in d.iterdir() if f.is_file() and f.suffix == ".txt"}
        if (info.root / "labels").is_dir():
            found |= set(list_files(info.root / "labels", ".txt"))
        for f in sorted(found - expected):
            if f.name not in ("classes.txt", "labels.txt", "names.txt"):
                problems.append(LabelError(f, "orphan label file", "no image with this stem beside it in images/"))
        return problems


class _RowProblem(Exception):
    """One bad row: becomes a :class:`LabelError` with the file and line."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _short(v) -> str:
    return " ".join(f"{x:g}" for x in np.asarray(v).ravel()[:8]) + (" ..." if np.asarray(v).size > 8 else "")
