"""Pascal VOC datasets: ``Annotations/<stem>.xml`` beside ``JPEGImages/`` (images found by ``<filename>``,
else by stem), splits from ``ImageSets/Main/<split>.txt`` (``trainval`` is used only when ``train`` and
``val`` are not there; per-class lists such as ``cat_train.txt`` are skipped); without lists every XML is
in the split ``train``.

Boxes are stored as 1-based inclusive pixel corners: ``xmin`` - 1 and ``ymin`` - 1 are the left and top
pixel edges, ``xmax`` and ``ymax`` the right and bottom ones (as Detectron2 reads them). Names: from
``classes.txt``/``labels.txt`` in the root when there is one (then a name not in it is "unknown
class"), else every name the XML files use, sorted.

Kept on output: the header (``folder``, ``source``, ``owner``, ``segmented`` ...), each object's
``pose``, ``difficult``, ``occluded`` and any other one-value field; ``truncated`` is set to 1 when
augmentation clipped the box (``Obj.attrs["clipped"]``). Nested object parts (``<part>``, person layout)
do not move with the pixels, so they are not written.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from augkit.io.fileio import atomic_write_text
from augkit.labels.formats import (
    LabelError,
    LabelFormat,
    fit_range,
    image_size_of,
    list_files,
    list_images,
    read_names_file,
    register_format,
)
from augkit.labels.model import DatasetInfo, Item, Labels, Obj

#: object fields augkit writes itself
_OWN = {"name", "bndbox", "truncated"}
#: header fields augkit writes itself
_OWN_HEADER = {"filename", "size", "object", "path"}


def _parse(path: Path) -> ET.Element:
    try:
        return ET.fromstring(path.read_bytes())
    except ET.ParseError as exc:
        raise LabelError(path, "unreadable label file", f"XML: {exc}", exc.position[0]) from None
    except OSError as exc:
        raise LabelError(path, "unreadable label file", str(exc)) from None


def _header(path: Path) -> dict[str, str]:
    """The source XML's top-level fields other than those augkit writes, as XML text (kept on output)."""
    try:
        tree = _parse(path)
    except LabelError:
        return {}
    return {el.tag: ET.tostring(el, encoding="unicode").strip() for el in tree if el.tag not in _OWN_HEADER}


def _text(el: ET.Element | None, tag: str) -> str | None:
    found = el.find(tag) if el is not None else None
    return found.text.strip() if found is not None and found.text is not None else None


def _lines_of(path: Path, tag: str) -> list[int]:
    """1-based line of each ``<tag>`` start in the file (ElementTree keeps no positions)."""
    lines = []
    try:
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            lines += [n] * line.count(f"<{tag}>")
    except OSError:
        pass
    return lines


@register_format
class VocFormat(LabelFormat):
    name = "voc"
    layout = "Annotations/*.xml beside JPEGImages/ (ImageSets/Main/<split>.txt optional)"

    def detect(self, root: Path) -> bool:
        ann = root / "Annotations"
        return ann.is_dir() and any(p.suffix.lower() == ".xml" for p in ann.iterdir())

    # ------------------------------------------------------------------ scan

    def scan(self, root: Path) -> DatasetInfo:
        root = Path(root)
        info = DatasetInfo(kind=self.name, root=root, names=[])
        xmls = {
            p.relative_to(root / "Annotations").with_suffix("").as_posix(): p
            for p in list_files(root / "Annotations", ".xml")
        }
        img_dir = root / "JPEGImages"
        images = (
            {p.relative_to(img_dir).with_suffix("").as_posix(): p for p in list_images(img_dir)}
            if img_dir.is_dir()
            else {}
        )
        splits = self._split_lists(root)
        if not splits:
            splits = {"train": sorted(set(xmls) | set(images))}
        names: set[str] = set()
        for split, stems in splits.items():
            items = []
            for stem in stems:
                xml = xmls.get(stem)
                image = images.get(stem) or img_dir / f"{stem}.jpg"
                size = None
                attrs: dict[str, Any] = {}
                if xml is not None:
                    try:
                        tree = _parse(xml)
                    except LabelError:
                        tree = None  # parse() reports it
                    if tree is not None:
                        fname = _text(tree, "filename")
                        if fname and (img_dir / fname).is_file():
                            image = img_dir / fname
                        w, h = _text(tree.find("size"), "width"), _text(tree.find("size"), "height")
                        if w and h and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0:
                            size = (int(w), int(h))
                        names.update(n for o in tree.iter("object") if (n := _text(o, "name")))
                items.append(Item(image=image, split=split, size=size, label_file=xml, attrs=attrs))
            info.splits[split] = items
        listed = read_names_file(root)
        info.names = listed if listed is not None else sorted(names)
        info.extra["names_listed"] = listed is not None
        info.extra["orphans"] = sorted(str(p) for s, p in xmls.items() if s not in images)
        return info

    @staticmethod
    def _split_lists(root: Path) -> dict[str, list[str]]:
        main = root / "ImageSets" / "Main"
        if not main.is_dir():
            return {}
        lists = {p.stem: p for p in sorted(main.glob("*.txt")) if "_" not in p.stem}
        if "train" in lists and "val" in lists:
            lists.pop("trainval", None)
        order = ["train", "trainval", "val", "test"]
        out = {}
        for name in sorted(lists, key=lambda n: (order.index(n) if n in order else len(order), n)):
            stems = [ln.split()[0] for ln in lists[name].read_text(encoding="utf-8").splitlines() if ln.strip()]
            out[name] = stems
        return out

    # ------------------------------------------------------------------ read

    def parse(self, info: DatasetInfo, item: Item) -> tuple[Labels, list[LabelError]]:
        if item.label_file is None:
            return Labels(), [LabelError(item.image, "missing label file", "no Annotations/<stem>.xml for this image")]
        path = item.label_file
        tree = _parse(path)
        W, H = item.size or image_size_of(item.image)
        lines = _lines_of(path, "object")
        objs, problems = [], []
        index = {n: i for i, n in enumerate(info.names)}
        for k, o in enumerate(tree.iter("object")):
            line = lines[k] if k < len(lines) else None
            try:
                objs.append(self._object(o, index, W, H))
            except _ObjProblem as exc:
                problems.append(LabelError(path, exc.reason, exc.detail, line))
        return Labels(objects=objs), problems

    @staticmethod
    def _object(o: ET.Element, index: dict[str, int], W: int, H: int) -> Obj:
        name = _text(o, "name")
        if name is None or name not in index:
            raise _ObjProblem("unknown class", f"name {name!r} is not among the names")
        bb = o.find("bndbox")
        vals = [v for t in ("xmin", "ymin", "xmax", "ymax") if (v := _text(bb, t)) is not None]
        if bb is None or len(vals) != 4:
            raise _ObjProblem("bad label line", f"object {name!r} has no complete bndbox")
        try:
            x0, y0, x1, y1 = (float(v) for v in vals)
        except ValueError:
            raise _ObjProblem("bad label line", f"bndbox values are not numbers: {vals}") from None
        xs, ys = fit_range([x0 - 1, x1], W), fit_range([y0 - 1, y1], H)
        if xs is None or ys is None:
            raise _ObjProblem("coordinate out of range", f"bndbox {vals} outside 1..{W} x 1..{H}")
        if xs[1] <= xs[0] or ys[1] <= ys[0]:
            raise _ObjProblem("degenerate box", f"bndbox {vals} has no width or no height")
        attrs: dict[str, Any] = {}
        for el in o:
            if el.tag in _OWN or len(el):
                continue  # nested parts are not kept (they would not move)
            attrs[el.tag] = (el.text or "").strip()
        attrs["truncated"] = _text(o, "truncated") or "0"
        return Obj(index[name], np.array([xs[0], ys[0], xs[1], ys[1]]), attrs=attrs)

    # ------------------------------------------------------------------ write

    def write(
        self, info: DatasetInfo, dst: Path, item: Item, image_rel: str, labels: Labels, size: tuple[int, int]
    ) -> dict:
        W, H = size
        rel = Path(image_rel)
        parts = list(rel.parts)
        if "JPEGImages" in parts:
            parts[parts.index("JPEGImages")] = "Annotations"
        else:
            parts = ["Annotations", *parts[1:]] if len(parts) > 1 else ["Annotations", *parts]
        label_rel = Path(*parts).with_suffix(".xml")
        header = _header(item.label_file) if item.label_file is not None else {}
        root = ET.Element("annotation")
        for tag in ("folder",):
            if tag in header:
                root.append(ET.fromstring(header[tag]))
        ET.SubElement(root, "filename").text = rel.name
        for tag, xml in header.items():
            if tag not in ("folder", "segmented"):
                root.append(ET.fromstring(xml))
        sz = ET.SubElement(root, "size")
        ET.SubElement(sz, "width").text = str(int(W))
        ET.SubElement(sz, "height").text = str(int(H))
        ET.SubElement(sz, "depth").text = "3"
        if "segmented" in header:
            root.append(ET.fromstring(header["segmented"]))
        for o in labels.objects:
            root.append(self._object_xml(info, o, W, H))
        ET.indent(root, space="  ")
        out = dst / label_rel
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, ET.tostring(root, encoding="unicode") + "\n")
        stem = rel.relative_to(rel.parts[0]).with_suffix("").as_posix() if len(rel.parts) > 1 else rel.stem
        return {"split": item.split, "image": image_rel, "label": label_rel.as_posix(), "stem": stem}

    @staticmethod
    def _object_xml(info: DatasetInfo, o: Obj, W: int, H: int) -> ET.Element:
        el = ET.Element("object")
        ET.SubElement(el, "name").text = info.names[o.cls]
        attrs = dict(o.attrs)
        truncated = "1" if attrs.get("clipped") else str(attrs.get("truncated", "0"))
        for k, v in attrs.items():
            if k not in _OWN and k not in ("clipped",) and isinstance(v, str):
                ET.SubElement(el, k).text = v
        ET.SubElement(el, "truncated").text = truncated
        x0, y0, x1, y1 = np.clip(o.box, 0, [W, H, W, H])
        xmin, ymin = int(round(x0)) + 1, int(round(y0)) + 1
        xmax, ymax = max(xmin, int(round(x1))), max(ymin, int(round(y1)))
        bb = ET.SubElement(el, "bndbox")
        for tag, v in zip(
            ("xmin", "ymin", "xmax", "ymax"), (min(xmin, W), min(ymin, H), min(xmax, W), min(ymax, H)), strict=True
        ):
            ET.SubElement(bb, tag).text = str(v)
        return el

    def finish(self, info: DatasetInfo, dst: Path, records: list[dict]) -> None:
        if not (info.root / "ImageSets" / "Main").is_dir():
            return
        by_split: dict[str, list[str]] = {}
        for r in records:
            by_split.setdefault(r["split"], []).append(r["stem"])
        main = dst / "ImageSets" / "Main"
        main.mkdir(parents=True, exist_ok=True)
        for split in info.splits:
            stems = by_split.get(split)
            if stems is None:
                continue  # a split copied unchanged: its list is the source's (label_paths)
            atomic_write_text(main / f"{split}.txt", "".join(f"{s}\n" for s in sorted(stems)))

    # ------------------------------------------------------------------ check

    def check(self, info: DatasetInfo) -> list[LabelError]:
        return [
            LabelError(p, "orphan label file", "no image with this stem in JPEGImages/")
            for p in info.extra.get("orphans", [])
        ]


class _ObjProblem(Exception):
    """One bad ``<object>``: becomes a :class:`LabelError` with the file and its line."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason)
        self.reason, self.detail = reason, detail
