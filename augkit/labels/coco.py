"""COCO instances datasets: one JSON per split (``images``, ``annotations``, ``categories``).

Layouts found: ``annotations/instances_<split>.json`` (or any COCO JSON in ``annotations/`` or the root)
with the images in ``images/<split>/``, ``<split>/``, ``images/`` or the root (the first folder where the
JSON's first ``file_name`` exists), and Roboflow's ``<split>/_annotations.coco.json`` beside its images.
A JSON counts as COCO when it holds ``images`` and ``categories``.

Read: ``bbox`` (x, y, w, h), polygon segmentation (one or more parts), RLE segmentation (``counts`` as a
compressed string or an uncompressed list; decoded by this module's own codec: pycocotools is not a
dependency) into an instance mask, keypoints (COCO stores pixel *indices*: 0.5 is added on reading and
taken off on writing, as Detectron2 does), ``iscrowd`` and every other field kept. Class index = position
of the category in the categories sorted by id; :attr:`DatasetInfo.skeleton` holds 0-based pairs (COCO's
are 1-based); ``flip_idx`` pairs ``left*``/``right*`` keypoint names.

Write: each image's entry and annotations go into a record; :meth:`CocoFormat.finish` writes each split's
JSON atomically with new image and annotation ids (1..n, images in file-name order, so the bytes do not
depend on the order outputs finished), the categories and the other top-level fields unchanged. A mask
is written back as RLE in the form it was read (string or list), a polygon as a polygon.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from augkit.errors import UsageError
from augkit.io.fileio import atomic_write_text
from augkit.labels.formats import (
    LabelError,
    LabelFormat,
    fit_range,
    image_size_of,
    list_images,
    polygon_area,
    register_format,
)
from augkit.labels.model import DatasetInfo, Item, Labels, Obj, box_from_mask, box_from_points

#: annotation fields augkit rewrites; every other field is kept as it is
_OWN_FIELDS = {"id", "image_id", "category_id", "bbox", "area", "segmentation", "keypoints", "num_keypoints"}
_PEEK = 1 << 20


# ============================================================================= RLE


def rle_string_to_counts(s: str) -> list[int]:
    """Decode COCO's compressed RLE string (maskApi.c ``rleFrString``) into run lengths."""
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("RLE string ends inside a number")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {s[p]!r} is not RLE")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_counts_to_string(counts: list[int]) -> str:
    """Encode run lengths as COCO's compressed RLE string (maskApi.c ``rleToString``)."""
    out = []
    for i, x in enumerate(counts):
        x = int(x)
        if i > 2:
            x -= int(counts[i - 2])
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def mask_to_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a bool mask in column-major order, starting with a run of zeros (possibly empty)."""
    flat = np.asarray(mask, bool).ravel(order="F")
    if not flat.size:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]]))
    return ([0] if flat[0] else []) + [int(r) for r in runs]


def counts_to_mask(counts: list[int], h: int, w: int) -> np.ndarray:
    """The (h, w) bool mask of column-major run lengths; ValueError when they do not add up to h * w."""
    c = np.asarray(counts, dtype=np.int64)
    if np.any(c < 0) or int(c.sum()) != h * w:
        raise ValueError(f"RLE runs add up to {int(c.sum())}, the mask has {h}x{w} = {h * w} pixels")
    flat = np.repeat(np.arange(len(c)) % 2 == 1, c)
    return flat.reshape((h, w), order="F")


def encode_rle(mask: np.ndarray, compressed: bool = True) -> dict:
    """A COCO RLE dict (``size`` [h, w], ``counts`` string or list) of a bool mask."""
    counts = mask_to_counts(mask)
    return {
        "size": [int(mask.shape[0]), int(mask.shape[1])],
        "counts": rle_counts_to_string(counts) if compressed else counts,
    }


def decode_rle(rle: dict) -> np.ndarray:
    """The bool mask of a COCO RLE dict (either form of ``counts``)."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = rle_string_to_counts(counts)
    return counts_to_mask(counts, h, w)


# ============================================================================= layout


def _peek_is_coco(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(_PEEK)
    except OSError:
        return False
    return head.lstrip()[:1] == b"{" and b'"images"' in head


def _candidate_jsons(root: Path) -> list[Path]:
    found = []
    for folder in (root / "annotations", root):
        if folder.is_dir():
            found += sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))
    found += sorted(root.glob("*/_annotations.coco.json"))
    return [p for p in dict.fromkeys(found) if p.is_file()]


def _split_name(root: Path, j: Path) -> str:
    if j.name == "_annotations.coco.json":
        return j.parent.name
    m = re.match(r"^instances_(.+)$", j.stem)
    return m.group(1) if m else j.stem


@register_format
class CocoFormat(LabelFormat):
    name = "coco"
    layout = (
        "a COCO JSON (images, annotations, categories) in annotations/ or the root, or <split>/_annotations.coco.json"
    )

    def detect(self, root: Path) -> bool:
        return any(_peek_is_coco(j) for j in _candidate_jsons(root))

    # ------------------------------------------------------------------ scan

    def scan(self, root: Path) -> DatasetInfo:
        root = Path(root)
        info = DatasetInfo(kind=self.name, root=root, names=[])
        docs: dict[str, tuple[Path, dict]] = {}
        for j in _candidate_jsons(root):
            if not _peek_is_coco(j):
                continue
            doc = _load_json(j)
            if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or "categories" not in doc:
                continue
            split = _split_name(root, j)
            if split in docs:
                split = j.relative_to(root).with_suffix("").as_posix()
            docs[split] = (j, doc)
        if not docs:
            raise UsageError(f"{root}: no COCO JSON with images and categories found ({self.layout})")
        self._categories(info, docs)
        info.extra["splits"] = {}
        info.extra["problems"] = []
        for split, (j, doc) in docs.items():
            info.splits[split] = self._index(info, split, j, doc)
        return info

    def _categories(self, info: DatasetInfo, docs: dict[str, tuple[Path, dict]]) -> None:
        by_id: dict[int, dict] = {}
        for j, doc in docs.values():
            cats = doc.get("categories")
            if not isinstance(cats, list):
                raise UsageError(f"{j}: categories must be a list")
            for c in cats:
                if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
                    raise UsageError(f"{j}: every category needs an integer id and a name (got {c!r:.80})")
                old = by_id.get(c["id"])
                if old is not None and old.get("name") != c["name"]:
                    raise UsageError(
                        f"{j}: category id {c['id']} is {c['name']!r} here and {old['name']!r} in another JSON"
                    )
                by_id.setdefault(c["id"], c)
        ids = sorted(by_id)
        info.names = [str(by_id[i]["name"]) for i in ids]
        info.extra["category_ids"] = ids
        with_kpts = [by_id[i] for i in ids if isinstance(by_id[i].get("keypoints"), list) and by_id[i]["keypoints"]]
        if with_kpts:
            c = with_kpts[0]
            names = [str(n) for n in c["keypoints"]]
            info.kpt_shape = (len(names), 3)
            info.keypoint_names = names
            sk = c.get("skeleton") or []
            info.skeleton = [[int(a) - 1, int(b) - 1] for a, b in sk if isinstance(a, int) and isinstance(b, int)]
            info.flip_idx = flip_idx_from_names(names)

    def _index(self, info: DatasetInfo, split: str, j: Path, doc: dict) -> list[Item]:
        root = info.root
        images = [e for e in doc["images"] if isinstance(e, dict)]
        anns = doc.get("annotations") or []
        image_dir = self._image_dir(root, split, j, images)
        info.extra["splits"][split] = {
            "json": j.relative_to(root).as_posix(),
            "image_dir": image_dir.relative_to(root).as_posix() if image_dir != root else ".",
            "top": {k: v for k, v in doc.items() if k not in ("images", "annotations")},
        }
        problems = info.extra["problems"]
        id_counts = Counter(_key(e.get("id")) for e in images)
        name_counts = Counter(_key(e.get("file_name")) for e in images)
        for k, n in id_counts.items():
            if n > 1:
                problems.append(LabelError(j, "duplicate id", f"image id {k} is used by {n} images"))
        for k, n in name_counts.items():
            if n > 1 and k is not None:
                problems.append(LabelError(j, "duplicate id", f"file_name {k!r} is listed {n} times"))
        for k, n in Counter(_key(a.get("id")) for a in anns if isinstance(a, dict)).items():
            if n > 1:
                problems.append(LabelError(j, "duplicate id", f"annotation id {k} is used {n} times"))
        for k, n in Counter(_key(c.get("id")) for c in doc.get("categories", []) if isinstance(c, dict)).items():
            if n > 1:
                problems.append(LabelError(j, "duplicate id", f"category id {k} is used {n} times"))
        by_image: dict[Any, list[dict]] = {}
        for i, a in enumerate(anns):
            if not isinstance(a, dict) or "image_id" not in a:
                problems.append(LabelError(j, "bad label line", f"annotations[{i}] has no image_id"))
                continue
            by_image.setdefault(_key(a["image_id"]), []).append(a)
        known = set(id_counts)
        for image_id, group in by_image.items():
            if image_id not in known:
                problems.append(
                    LabelError(j, "unknown image id", f"{len(group)} annotation(s) for image id {image_id}")
                )
        items = []
        for i, e in enumerate(doc["images"]):
            if not isinstance(e, dict) or not isinstance(e.get("file_name"), str) or not isinstance(e.get("id"), int):
                problems.append(LabelError(j, "bad label line", f"images[{i}] needs an integer id and a file_name"))
                continue
            w, h = e.get("width"), e.get("height")
            size = (w, h) if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 else None
            pre = []
            if id_counts[e["id"]] > 1:
                pre.append(("duplicate id", f"image id {e['id']} is used by {id_counts[e['id']]} images"))
            items.append(
                Item(
                    image=image_dir / e["file_name"],
                    split=split,
                    size=size,
                    attrs={"entry": e, "anns": by_image.get(e["id"], []), "json": str(j), "pre": pre},
                )
            )
        return sorted(items, key=lambda it: str(it.image))

    @staticmethod
    def _image_dir(root: Path, split: str, j: Path, images: list[dict]) -> Path:
        cands = [root / "images" / split, root / split, root / "images", root]
        if j.name == "_annotations.coco.json" or j.parent not in (root, root / "annotations"):
            cands.insert(0, j.parent)
        first = next((e["file_name"] for e in images if isinstance(e.get("file_name"), str)), None)
        if first is not None:
            for c in cands:
                if (c / first).is_file():
                    return c
        return next((c for c in cands if c.is_dir()), root)

    # ------------------------------------------------------------------ read

    def parse(self, info: DatasetInfo, item: Item) -> tuple[Labels, list[LabelError]]:
        j = Path(item.attrs["json"])
        problems = [LabelError(j, r, f"{item.image.name}: {d}") for r, d in item.attrs.get("pre", [])]
        W, H = item.size or image_size_of(item.image)
        index = {cid: k for k, cid in enumerate(info.extra["category_ids"])}
        objs = []
        for a in item.attrs["anns"]:
            try:
                objs.append(self._annotation(info, a, index, W, H))
            except _AnnProblem as exc:
                problems.append(LabelError(j, exc.reason, f"{item.image.name}, annotation {a.get('id')}: {exc.detail}"))
        return Labels(objects=objs), problems

    def _annotation(self, info: DatasetInfo, a: dict, index: dict[int, int], W: int, H: int) -> Obj:
        cid = a.get("category_id")
        if not isinstance(cid, int) or cid not in index:
            raise _AnnProblem("unknown class", f"category_id {cid!r} is not among the categories")
        attrs: dict[str, Any] = {"id": a.get("id"), "iscrowd": a.get("iscrowd", 0)}
        attrs["extra"] = {k: v for k, v in a.items() if k not in _OWN_FIELDS}
        polygons, mask = self._segmentation(a.get("segmentation"), W, H, attrs)
        keypoints = self._keypoints(info, a.get("keypoints"), W, H)
        box = self._bbox(a.get("bbox"), W, H)
        if box is None:
            if polygons:
                box = box_from_points(np.concatenate(polygons))
            elif mask is not None:
                box = box_from_mask(mask)
            elif keypoints is not None and np.any(keypoints[:, 2] > 0):
                box = box_from_points(keypoints[keypoints[:, 2] > 0, :2])
            if box is None:
                raise _AnnProblem("degenerate box", "no bbox and nothing to derive one from")
        return Obj(index[cid], box, polygons=polygons, mask=mask, keypoints=keypoints, attrs=attrs)

    @staticmethod
    def _bbox(b: Any, W: int, H: int) -> np.ndarray | None:
        if b is None:
            return None
        if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)):
            raise _AnnProblem("bad label line", f"bbox must be 4 numbers x, y, w, h (got {b!r:.60})")
        x, y, w, h = (float(v) for v in b)
        if not np.all(np.isfinite([x, y, w, h])) or w < 0 or h < 0:
            raise _AnnProblem("coordinate out of range", f"bbox {b}")
        xs, ys = fit_range([x, x + w], W), fit_range([y, y + h], H)
        if xs is None or ys is None:
            raise _AnnProblem("coordinate out of range", f"bbox {b} reaches outside the {W}x{H} image")
        if xs[1] <= xs[0] or ys[1] <= ys[0]:
            raise _AnnProblem("degenerate box", f"bbox {b} has no width or no height")
        return np.array([xs[0], ys[0], xs[1], ys[1]])

    @staticmethod
    def _segmentation(seg: Any, W: int, H: int, attrs: dict) -> tuple[list[np.ndarray], np.ndarray | None]:
        if seg is None or seg == []:
            return [], None
        if isinstance(seg, list):
            polys = []
            for part in seg:
                if not isinstance(part, list) or not all(isinstance(v, (int, float)) for v in part):
                    raise _AnnProblem("bad label line", "a polygon must be a list of numbers x1, y1, x2, y2, ...")
                if len(part) % 2:
                    raise _AnnProblem("bad label line", f"a polygon with an odd count of numbers ({len(part)})")
                if len(part) < 6:
                    raise _AnnProblem("polygon too short", f"{len(part) // 2} point(s); a polygon needs 3 or more")
                xy = np.asarray(part, np.float64).reshape(-1, 2)
                xs, ys = fit_range(xy[:, 0], W), fit_range(xy[:, 1], H)
                if xs is None or ys is None:
                    raise _AnnProblem("coordinate out of range", f"polygon outside the {W}x{H} image")
                polys.append(np.stack([xs, ys], 1))
            return polys, None
        if isinstance(seg, dict) and "counts" in seg and "size" in seg:
            size = seg["size"]
            if not (isinstance(size, list) and len(size) == 2) or [int(size[0]), int(size[1])] != [H, W]:
                raise _AnnProblem(
                    "image size mismatch", f"RLE size {size!r} but the image is {W}x{H} (h, w = {H}, {W})"
                )
            try:
                mask = decode_rle(seg)
            except (ValueError, TypeError) as exc:
                raise _AnnProblem("bad label line", f"RLE: {exc}") from None
            attrs["rle"] = "string" if isinstance(seg["counts"], str) else "list"
            return [], mask
        raise _AnnProblem("bad label line", f"segmentation must be polygons or an RLE dict (got {type(seg).__name__})")

    @staticmethod
    def _keypoints(info: DatasetInfo, kp: Any, W: int, H: int) -> np.ndarray | None:
        if kp is None:
            return None
        k = info.kpt_shape[0] if info.kpt_shape else 0
        if not isinstance(kp, list) or not all(isinstance(v, (int, float)) for v in kp):
            raise _AnnProblem("bad label line", "keypoints must be a list of numbers x, y, v, ...")
        if len(kp) != 3 * k:
            raise _AnnProblem("keypoint count", f"{len(kp) / 3:g} keypoints ({len(kp)} values); the category has {k}")
        out = np.zeros((k, 3))
        for i, (x, y, v) in enumerate(np.asarray(kp, np.float64).reshape(-1, 3)):
            if v not in (0, 1, 2):
                raise _AnnProblem("bad label line", f"keypoint {i} visibility {v:g} (allowed: 0, 1, 2)")
            if v == 0:
                continue
            px, py = fit_range([x + 0.5], W), fit_range([y + 0.5], H)
            if px is None or py is None:
                raise _AnnProblem("coordinate out of range", f"keypoint {i} at {x:g}, {y:g} outside the {W}x{H} image")
            out[i] = (px[0], py[0], v)
        return out

    def label_paths(self, info: DatasetInfo, item: Item) -> list[Path]:
        return [Path(item.attrs["json"])]

    # ------------------------------------------------------------------ write

    def write(
        self, info: DatasetInfo, dst: Path, item: Item, image_rel: str, labels: Labels, size: tuple[int, int]
    ) -> dict:
        meta = info.extra["splits"][item.split]
        W, H = size
        entry = {
            k: v for k, v in item.attrs.get("entry", {}).items() if k not in ("id", "file_name", "width", "height")
        }
        file_name = Path(os.path.relpath(image_rel, meta["image_dir"])).as_posix()
        image = {"file_name": file_name, "width": int(W), "height": int(H), **entry}
        anns = [self._ann_out(info, o, W, H) for o in labels.objects]
        return {"split": item.split, "json": meta["json"], "image": image, "annotations": anns}

    @staticmethod
    def _ann_out(info: DatasetInfo, o: Obj, W: int, H: int) -> dict:
        x0, y0, x1, y1 = (float(v) for v in np.clip(o.box, 0, [W, H, W, H]))
        a: dict[str, Any] = {"category_id": info.extra["category_ids"][o.cls]}
        if o.mask is not None:
            a["segmentation"] = encode_rle(o.mask, compressed=o.attrs.get("rle", "string") == "string")
            area = float(np.count_nonzero(o.mask))
        elif o.polygons:
            polys = [np.round(np.clip(p, 0, [W, H]), 2) for p in o.polygons if len(p) >= 3]
            a["segmentation"] = [[float(v) for v in p.ravel()] for p in polys]
            area = sum(polygon_area(p) for p in polys)  # of the polygon as written: a re-read gives the same
        else:
            area = (x1 - x0) * (y1 - y0)
        a["area"] = round(area, 2)
        a["bbox"] = [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]
        a["iscrowd"] = int(o.attrs.get("iscrowd", 0) or 0)
        if o.keypoints is not None:
            kp: list[float] = []
            for x, y, v in o.keypoints:
                inside = v > 0 and 0 <= x <= W and 0 <= y <= H
                kp += [round(float(x) - 0.5, 2), round(float(y) - 0.5, 2), int(v)] if inside else [0, 0, 0]
            a["keypoints"] = kp
            a["num_keypoints"] = sum(1 for v in kp[2::3] if v > 0)
        for k, v in o.attrs.get("extra", {}).items():
            a.setdefault(k, v)
        return a

    def finish(self, info: DatasetInfo, dst: Path, records: list[dict]) -> None:
        by_json: dict[str, list[dict]] = {}
        for r in records:
            by_json.setdefault(r["json"], []).append(r)
        tops = {m["json"]: m["top"] for m in info.extra["splits"].values()}
        for rel, recs in sorted(by_json.items()):
            images: list[dict] = []
            anns: list[dict] = []
            for image_id, r in enumerate(sorted(recs, key=lambda r: r["image"]["file_name"]), 1):
                images.append({"id": image_id, **r["image"]})
                for a in r["annotations"]:
                    anns.append({"id": len(anns) + 1, "image_id": image_id, **a})
            top = dict(tops.get(rel, {}))
            doc = {k: v for k, v in top.items() if k != "categories"}
            doc.update({"images": images, "annotations": anns, "categories": top.get("categories", [])})
            out = dst / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out, json.dumps(doc, ensure_ascii=False))

    # ------------------------------------------------------------------ check

    def check(self, info: DatasetInfo) -> list[LabelError]:
        problems = list(info.extra.get("problems", []))
        listed: dict[str, set[Path]] = {}
        for split, meta in info.extra["splits"].items():
            listed.setdefault(meta["image_dir"], set()).update(it.image for it in info.splits[split])
        for image_dir, images in listed.items():
            folder = info.root / image_dir
            if image_dir == "." or not folder.is_dir():
                continue  # the root holds more than images: only a dedicated image folder can have orphans
            for p in list_images(folder):
                if p not in images:
                    problems.append(LabelError(p, "orphan image", f"not listed in any JSON using {image_dir}/"))
        return problems


class _AnnProblem(Exception):
    """One bad annotation: becomes a :class:`LabelError` naming the JSON, the image and the annotation id."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _key(v: Any) -> Any:
    """``v`` as a dict key: ids are ints in COCO, but a hostile file may give a list or an object."""
    return v if v is None or isinstance(v, (int, float, str)) else json.dumps(v, sort_keys=True)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read ({exc})") from None


def flip_idx_from_names(names: list[str]) -> list[int] | None:
    """The mirror index of each keypoint under a horizontal flip, pairing ``left``/``right`` in the
    names (``left_eye`` <-> ``right_eye``); None when no name has a partner."""
    idx = {n: i for i, n in enumerate(names)}
    out = []
    for n in names:
        m = re.sub(r"left", "\0", n)
        m = re.sub(r"right", "left", m).replace("\0", "right")
        out.append(idx.get(m, idx[n]))
    return out if out != list(range(len(names))) else None
