"""Semantic segmentation folders: ``images/`` beside ``masks/``, the same relative path and stem, one
class-index PNG per image (pixel value = class index; 255 = ignore, :data:`~augkit.labels.model.MASK_IGNORE`).

Splits: the sub-folders of ``images/`` (``images/train``, ``images/val`` with ``masks/train``,
``masks/val``), or one split ``train`` when the images lie directly in ``images/``. Names: one per mask
value from ``classes.txt``/``labels.txt``/``names.txt`` in the root; without one, any value is allowed.

A mask is a palette PNG (its palette is kept on output) or an 8-bit greyscale PNG; an RGB mask (colours
instead of indices) is refused, naming the file, since its colour-to-class table is not known. Every image
needs its mask ("missing label file"); the mask must have the image's size.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from augkit.io.fileio import atomic_write_bytes, atomic_write_text
from augkit.labels.formats import (
    LabelError,
    LabelFormat,
    image_size_of,
    list_files,
    list_images,
    read_names_file,
    register_format,
)
from augkit.labels.model import MASK_IGNORE, DatasetInfo, Item, Labels
from augkit.limits import DEFAULT_MAX_PIXELS


def mask_rel_for(image_rel: str | Path) -> Path:
    """``images/<rest>/<stem>.<ext>`` -> ``masks/<rest>/<stem>.png``."""
    parts = list(Path(image_rel).parts)
    if "images" in parts:
        parts[parts.index("images")] = "masks"
    else:
        parts.insert(0, "masks")
    return Path(*parts).with_suffix(".png")


def read_mask(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(class indices (H, W) uint8, palette (256, 3) uint8 or None) of a mask PNG; :class:`LabelError`
    for a file that is not a class-index image."""
    from PIL import Image  # deferred: masks only

    try:
        with Image.open(path) as im:
            if im.size[0] * im.size[1] > DEFAULT_MAX_PIXELS:  # before decoding, as for images
                w, h = im.size
                raise LabelError(path, "unreadable label file", f"too large: {w}x{h} > {DEFAULT_MAX_PIXELS:,} pixels")
            im.load()
            mode = im.mode
            if mode == "P":
                arr = np.array(im, dtype=np.uint8)
                pal = np.zeros((256, 3), np.uint8)
                raw = np.array(im.getpalette() or [], dtype=np.uint8)[: 256 * 3]
                pal.reshape(-1)[: raw.size] = raw
                return arr, pal
            if mode in ("L", "1"):
                return np.array(im.convert("L") if mode == "1" else im, dtype=np.uint8), None
            if mode in ("I", "I;16", "I;16B", "I;16L"):
                arr = np.array(im)
                if arr.max(initial=0) > 255:
                    raise LabelError(path, "class id out of range", f"16-bit mask with value {int(arr.max())} (> 255)")
                return arr.astype(np.uint8), None
    except FileNotFoundError:
        raise LabelError(path, "missing label file", "the mask file is gone") from None
    except Image.DecompressionBombError as exc:
        raise LabelError(path, "unreadable label file", f"too large: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise LabelError(path, "unreadable label file", str(exc)) from None
    raise LabelError(
        path, "unreadable label file", f"{mode} mask: masks must be class-index PNGs (palette or 8-bit greyscale)"
    )


@register_format
class MasksFormat(LabelFormat):
    name = "masks"
    layout = "images/ beside masks/ (class-index PNGs with the images' stems)"

    def detect(self, root: Path) -> bool:
        return (root / "images").is_dir() and (root / "masks").is_dir()

    def scan(self, root: Path) -> DatasetInfo:
        root = Path(root)
        info = DatasetInfo(kind=self.name, root=root, names=read_names_file(root) or [])
        info.extra["names_listed"] = bool(info.names)
        images = root / "images"
        subs = sorted(d for d in images.iterdir() if d.is_dir() and not d.name.startswith("."))
        direct = [f for f in images.iterdir() if f.is_file()]
        for d in [images] if direct or not subs else subs:
            split = "train" if d == images else d.name
            items = []
            for img in list_images(d):
                m = root / mask_rel_for(img.relative_to(root))
                items.append(Item(image=img, split=split, label_file=m if m.is_file() else None))
            info.splits[split] = items
        return info

    def parse(self, info: DatasetInfo, item: Item) -> tuple[Labels, list[LabelError]]:
        if item.label_file is None:
            rel = mask_rel_for(item.image.relative_to(info.root)).as_posix()
            return Labels(), [LabelError(item.image, "missing label file", f"no mask {rel}")]
        sem, pal = read_mask(item.label_file)
        problems = []
        W, H = item.size or image_size_of(item.image)
        if sem.shape != (H, W):
            problems.append(
                LabelError(
                    item.label_file,
                    "image size mismatch",
                    f"mask {sem.shape[1]}x{sem.shape[0]}, image {item.image.name} {W}x{H}",
                )
            )
        if info.names:
            values = np.unique(sem)
            bad = [int(v) for v in values if v >= len(info.names) and v != MASK_IGNORE]
            if bad:
                problems.append(
                    LabelError(
                        item.label_file,
                        "class id out of range",
                        f"values {bad[:8]}; names has {len(info.names)} "
                        f"(0..{len(info.names) - 1}, {MASK_IGNORE} ignore)",
                    )
                )
        return Labels(semantic=sem, palette=pal), problems

    def write(
        self, info: DatasetInfo, dst: Path, item: Item, image_rel: str, labels: Labels, size: tuple[int, int]
    ) -> dict:
        from PIL import Image  # deferred: masks only

        rel = mask_rel_for(image_rel)
        sem = labels.semantic if labels.semantic is not None else np.zeros((size[1], size[0]), np.uint8)
        sem = np.ascontiguousarray(sem, dtype=np.uint8)
        if sem.shape != (size[1], size[0]):
            raise ValueError(f"mask {sem.shape[::-1]} for an image of {size}")
        im = Image.frombytes("P" if labels.palette is not None else "L", (sem.shape[1], sem.shape[0]), sem.tobytes())
        if labels.palette is not None:
            im.putpalette(np.asarray(labels.palette, np.uint8).reshape(-1).tolist())
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, buf.getvalue())
        return {"split": item.split, "image": image_rel, "label": rel.as_posix()}

    def finish(self, info: DatasetInfo, dst: Path, records: list[dict]) -> None:
        if info.extra.get("names_listed"):
            dst.mkdir(parents=True, exist_ok=True)
            atomic_write_text(dst / "classes.txt", "".join(f"{n}\n" for n in info.names))

    def check(self, info: DatasetInfo) -> list[LabelError]:
        expected = {it.label_file for it in info.items if it.label_file is not None}
        return [
            LabelError(p, "orphan label file", "no image with this stem in images/")
            for p in list_files(info.root / "masks", ".png")
            if p not in expected
        ]
