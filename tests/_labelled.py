"""Tiny labelled datasets of each kind (YOLO, COCO, Pascal VOC, mask folders), drawn on real photos.

Each image is a small scikit-image photo (public domain: chelsea the cat, coffee, astronaut, rocket)
with objects *drawn* on it in pure colours, so a test can find an object in any output image by its
colour and compare it with the labels that came out of augkit:

- class 0 ``box``: a filled axis-aligned rectangle, magenta (:data:`COLORS`)
- class 1 ``triangle``: a filled triangle, cyan
- class 2 ``ellipse``: a filled ellipse (its polygon label: :data:`ELLIPSE_POINTS` points on the outline), lime
- keypoints (pose datasets): 3 per object (``left``, ``right``, ``centre``) drawn as 3x3 dots in one colour
  per keypoint index (:data:`KPT_COLORS`), on top of the object.

Coordinates follow :mod:`augkit.labels.model`: pixels, origin at the top-left corner of the top-left pixel.
A rectangle fills exactly the pixels ``x0 <= x < x1, y0 <= y < y1`` (its box is ``(x0, y0, x1, y1)``);
polygons and ellipses fill the pixels whose centres lie inside the outline; a keypoint dot is centred on
pixel (i, j), so its keypoint is (i + 0.5, j + 0.5). Images are PNG by default (lossless: colours exact).

Every builder returns a :class:`Built`: the dataset root, and for each split the :class:`Scene` of each
image (its pixels and the ground truth of every object), keyed by the image's stem. Background images
(no objects) are part of the training split where a builder takes ``background``.

The RLE helpers here (:func:`rle_counts`, :func:`rle_string`) are an independent reference written
from the COCO mask API (``maskApi.c``), so tests of augkit's own RLE code do not test it against itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml
from _imgs import photo, write

#: class names shared by every builder (index = YOLO class id = mask value - 1)
NAMES = ["box", "triangle", "ellipse"]
#: the RGB colour each class is drawn in
COLORS = [(255, 0, 255), (0, 255, 255), (0, 255, 0)]
#: keypoints per object, their names (COCO swaps ``left_*``/``right_*`` under a horizontal flip),
#: YOLO ``flip_idx``, COCO skeleton (1-based) and the dot colour of each keypoint index
KPT_NAMES = ["left_point", "right_point", "centre"]
FLIP_IDX = [1, 0, 2]
SKELETON = [[1, 3], [2, 3]]
KPT_COLORS = [(0, 0, 255), (255, 255, 0), (255, 0, 0)]
#: points on an ellipse's polygon label
ELLIPSE_POINTS = 24
#: photos used in turn for the images of a dataset
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
_SHIFT = 4  # cv2 fixed-point bits for sub-pixel outlines


@dataclass
class Shape:
    """One drawn object and its exact ground truth.

    ``box``: x_min, y_min, x_max, y_max (pixel edges) of the drawn pixels; ``polygon``: the outline the
    pixels were filled from (K, 2); ``mask``: the drawn pixels (H, W) bool (keypoint dots included);
    ``keypoints``: (3, 3) x, y, v or None; ``color``: the RGB colour of its pixels.
    """

    cls: int
    kind: str
    color: tuple[int, int, int]
    box: np.ndarray
    polygon: np.ndarray
    mask: np.ndarray
    keypoints: np.ndarray | None = None


@dataclass
class Scene:
    """One image: its pixels (H, W, 3 uint8 RGB) and its objects (empty: a background image)."""

    stem: str
    image: np.ndarray
    shapes: list[Shape] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return self.image.shape[1], self.image.shape[0]

    def semantic(self) -> np.ndarray:
        """The class-index mask (H, W) uint8: 0 background, class + 1 on each object's pixels."""
        sem = np.zeros(self.image.shape[:2], np.uint8)
        for s in self.shapes:
            sem[s.mask] = s.cls + 1
        return sem


@dataclass
class Built:
    """A built dataset: its root, and split -> image stem -> :class:`Scene`."""

    root: Path
    scenes: dict[str, dict[str, Scene]]

    def scene(self, stem: str) -> Scene:
        for split in self.scenes.values():
            if stem in split:
                return split[stem]
        raise KeyError(stem)


# ============================================================================= drawing


def _fill(canvas_shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    """Pixels whose centres lie inside ``polygon`` (pixel-edge coordinates), as a bool mask."""
    m = np.zeros(canvas_shape, np.uint8)
    pts = np.round((polygon - 0.5) * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(m, [pts], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return m.astype(bool)


def ellipse_polygon(cx: float, cy: float, ax: float, ay: float, n: int = ELLIPSE_POINTS) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], 1)


def _object(cls: int, cell: tuple[int, int, int, int], rng: np.random.Generator, hw: tuple[int, int]) -> Shape:
    """Class ``cls`` drawn inside the cell (x0, y0, x1, y1), with a random size and place."""
    x0, y0, x1, y1 = cell
    w = int(rng.integers(max(8, (x1 - x0) * 6 // 10), x1 - x0 - 1))
    h = int(rng.integers(max(8, (y1 - y0) * 6 // 10), y1 - y0 - 1))
    ox = x0 + int(rng.integers(0, x1 - x0 - w))
    oy = y0 + int(rng.integers(0, y1 - y0 - h))
    if cls == 0:
        poly = np.array([[ox, oy], [ox + w, oy], [ox + w, oy + h], [ox, oy + h]], np.float64)
        mask = np.zeros(hw, bool)
        mask[oy : oy + h, ox : ox + w] = True
    elif cls == 1:
        poly = np.array([[ox + w / 2, oy], [ox + w, oy + h], [ox, oy + h]], np.float64)
        mask = _fill(hw, poly)
    else:
        poly = ellipse_polygon(ox + w / 2, oy + h / 2, w / 2, h / 2)
        mask = np.zeros(hw, np.uint8)
        c = (round((ox + w / 2 - 0.5) * (1 << _SHIFT)), round((oy + h / 2 - 0.5) * (1 << _SHIFT)))
        cv2.ellipse(mask, c, (round(w / 2 * (1 << _SHIFT)), round(h / 2 * (1 << _SHIFT))), 0, 0, 360, 1, -1,
                    cv2.LINE_8, _SHIFT)  # fmt: skip
        mask = mask.astype(bool)
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
    return Shape(cls, ("box", "triangle", "ellipse")[cls], COLORS[cls], box, poly, mask)


def _keypoints(shape: Shape) -> np.ndarray:
    """left, right and centre points inside the object, on pixel centres (dots are drawn there)."""
    ys, xs = np.nonzero(shape.mask)
    cy = int(np.median(ys))
    row = xs[ys == cy]
    left, right = int(row.min()) + 2, int(row.max()) - 2
    mid = int(np.median(xs))
    cyc = int(np.median(ys[xs == mid])) if np.any(xs == mid) else cy
    pts = [(left, cy), (right, cy), (mid, min(cyc + 3, int(ys[xs == mid].max()) - 1))]
    return np.array([[x + 0.5, y + 0.5, 2.0] for x, y in pts])


def make_scene(
    stem: str,
    index: int,
    *,
    size: tuple[int, int] = (96, 72),
    classes: tuple[int, ...] = (0, 1, 2),
    keypoints: bool = False,
    seed: int = 0,
) -> Scene:
    """One image (``size`` = width, height) with one object of each class in ``classes``, side by side
    (no overlaps), drawn on photo ``PHOTOS[index % 4]``; ``keypoints`` adds the 3 dots per object.
    The same arguments give the same pixels."""
    rng = np.random.default_rng([seed, index])
    img = photo(PHOTOS[index % len(PHOTOS)], size, offset=index)
    W, H = size
    n = max(1, len(classes))
    shapes = []
    for k, cls in enumerate(classes):
        cell = (2 + k * (W - 4) // n, 3, 2 + (k + 1) * (W - 4) // n, H - 3)
        shapes.append(_object(cls, cell, rng, (H, W)))
    for s in shapes:
        img[s.mask] = s.color
        if keypoints:
            s.keypoints = _keypoints(s)
            for (x, y, _), color in zip(s.keypoints, KPT_COLORS, strict=True):
                i, j = int(x), int(y)
                img[j - 1 : j + 2, i - 1 : i + 2] = color
    return Scene(stem, img, shapes)


def color_mask(image: np.ndarray, color: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    """Pixels of ``image`` within ``tol`` (per channel) of ``color``: where a drawn object (or dot) is."""
    return np.all(np.abs(image.astype(np.int16) - np.array(color, np.int16)) <= tol, axis=-1)


def _scenes(splits: dict[str, int], background: int, ext: str, **kw) -> dict[str, dict[str, Scene]]:
    out: dict[str, dict[str, Scene]] = {}
    index = 0
    for split, count in splits.items():
        out[split] = {}
        for i in range(count):
            stem = f"{split}_{i:02d}"
            out[split][stem] = make_scene(stem, index, **kw)
            index += 1
        if split == next(iter(splits)):
            for i in range(background):
                stem = f"{split}_bg{i:02d}"
                s = make_scene(stem, index, classes=(), size=kw.get("size", (96, 72)))
                out[split][stem] = s
                index += 1
    return out


# ============================================================================= YOLO


def yolo_dataset(
    root: Path,
    *,
    task: str = "detect",
    splits: dict[str, int] | None = None,
    background: int = 1,
    size: tuple[int, int] = (96, 72),
    ext: str = ".png",
    seed: int = 0,
) -> Built:
    """An Ultralytics YOLO dataset: ``root/data.yaml`` (names, train/val paths; ``kpt_shape`` and
    ``flip_idx`` for pose), ``images/<split>/<stem><ext>`` and ``labels/<split>/<stem>.txt``.

    ``task``: "detect" (rows ``cls cx cy w h``), "segment" (``cls x1 y1 ... xn yn``, the drawn outline) or
    "pose" (``cls cx cy w h`` + 3 keypoints ``x y v``); all normalized to 0..1, 6 decimals.
    ``splits``: images per split (default train 3, val 1); ``background`` images without a label file
    are added to the first split."""
    splits = splits or {"train": 3, "val": 1}
    scenes = _scenes(splits, background, ext, size=size, keypoints=task == "pose", seed=seed)
    W, H = size
    for split, by_stem in scenes.items():
        for stem, sc in by_stem.items():
            write(root / "images" / split / f"{stem}{ext}", sc.image)
            if not sc.shapes:
                continue  # a background image has no label file
            rows = []
            for s in sc.shapes:
                if task == "segment":
                    xy = (s.polygon / [W, H]).ravel()
                    rows.append(" ".join([str(s.cls)] + [f"{v:.6f}" for v in xy]))
                    continue
                x0, y0, x1, y1 = s.box
                vals = [(x0 + x1) / 2 / W, (y0 + y1) / 2 / H, (x1 - x0) / W, (y1 - y0) / H]
                if task == "pose":
                    for x, y, v in s.keypoints:
                        vals += [x / W, y / H, v]
                rows.append(" ".join([str(s.cls)] + [f"{v:.6f}" for v in vals]))
            p = root / "labels" / split / f"{stem}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("\n".join(rows) + "\n")
    data: dict = {s: f"images/{s}" for s in scenes}
    data["names"] = dict(enumerate(NAMES))
    if task == "pose":
        data["kpt_shape"] = [len(KPT_NAMES), 3]
        data["flip_idx"] = FLIP_IDX
    (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return Built(root, scenes)


# ============================================================================= COCO


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of a bool mask: run lengths in column-major order, zeros first."""
    flat = np.asarray(mask, bool).ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return [int(r) for r in runs]


def rle_string(counts: list[int]) -> str:
    """Compressed COCO RLE string of ``counts`` (maskApi.c ``rleToString``)."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def coco_dataset(
    root: Path,
    *,
    segmentation: str = "mixed",
    keypoints: bool = False,
    splits: dict[str, int] | None = None,
    background: int = 1,
    size: tuple[int, int] = (96, 72),
    ext: str = ".png",
    category_ids: tuple[int, int, int] = (1, 2, 3),
    seed: int = 0,
) -> Built:
    """A COCO instances dataset: ``root/annotations/instances_<split>.json`` and ``root/images/<split>/``.

    ``segmentation``: "none" (boxes only), "polygon", "rle" (compressed string counts), "rle_raw"
    (uncompressed list counts, ``iscrowd`` 1 as COCO stores crowds) or "mixed" (box and triangle as
    polygons, the ellipse as compressed RLE). ``keypoints``: every object gets the 3 keypoints
    (``num_keypoints``; written as COCO pixel indices, the :class:`Shape`'s keypoints minus 0.5), and each
    category ``keypoints``/``skeleton``. ``category_ids``: the COCO ids of
    the 3 classes (COCO ids need not be 0-based nor contiguous). Image and annotation ids start at 1;
    ``background`` images (no annotations) join the first split."""
    splits = splits or {"train": 3, "val": 1}
    scenes = _scenes(splits, background, ext, size=size, keypoints=keypoints, seed=seed)
    W, H = size
    cats = []
    for i, name in enumerate(NAMES):
        c: dict = {"id": category_ids[i], "name": name, "supercategory": "shape"}
        if keypoints:
            c["keypoints"], c["skeleton"] = list(KPT_NAMES), [list(e) for e in SKELETON]
        cats.append(c)
    ann_id = 1
    img_id = 1
    for split, by_stem in scenes.items():
        images, anns = [], []
        for stem, sc in by_stem.items():
            name = f"{stem}{ext}"
            write(root / "images" / split / name, sc.image)
            images.append({"id": img_id, "file_name": name, "width": W, "height": H})
            for s in sc.shapes:
                x0, y0, x1, y1 = s.box
                a: dict = {
                    "id": ann_id,
                    "image_id": img_id,
                    "category_id": category_ids[s.cls],
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": float(s.mask.sum()),
                    "iscrowd": 0,
                }
                mode = segmentation
                if mode == "mixed":
                    mode = "rle" if s.cls == 2 else "polygon"
                if mode == "polygon":
                    a["segmentation"] = [[round(float(v), 3) for v in s.polygon.ravel()]]
                elif mode == "rle":
                    a["segmentation"] = {"size": [H, W], "counts": rle_string(rle_counts(s.mask))}
                elif mode == "rle_raw":
                    a["segmentation"] = {"size": [H, W], "counts": rle_counts(s.mask)}
                    a["iscrowd"] = 1
                if keypoints:  # COCO keypoints are pixel indices (Detectron2 adds 0.5 when it reads them)
                    kp = s.keypoints - [0.5, 0.5, 0]
                    a["keypoints"] = [round(float(v), 3) for v in kp.ravel()]
                    a["num_keypoints"] = int((s.keypoints[:, 2] > 0).sum())
                anns.append(a)
                ann_id += 1
            img_id += 1
        doc = {"info": {"description": "augkit test shapes"}, "licenses": [], "images": images,
               "annotations": anns, "categories": cats}  # fmt: skip
        p = root / "annotations" / f"instances_{split}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(doc, indent=1))
    return Built(root, scenes)


# ============================================================================= Pascal VOC


def voc_dataset(
    root: Path,
    *,
    splits: dict[str, int] | None = None,
    background: int = 1,
    size: tuple[int, int] = (96, 72),
    ext: str = ".jpg",
    seed: int = 0,
) -> Built:
    """A Pascal VOC dataset: ``root/JPEGImages/<stem><ext>``, ``root/Annotations/<stem>.xml`` (1-based
    inclusive pixel corners: a box (x0, y0, x1, y1) is written ``xmin=x0+1 ymin=y0+1 xmax=x1 ymax=y1``;
    the triangle is ``difficult``) and ``root/ImageSets/Main/<split>.txt``. Background images get an
    XML with no objects. JPEG by default, as VOC is (colours then match within a JPEG's error only)."""
    splits = splits or {"train": 3, "val": 1}
    scenes = _scenes(splits, background, ext, size=size, seed=seed)
    W, H = size
    for split, by_stem in scenes.items():
        for stem, sc in by_stem.items():
            write(root / "JPEGImages" / f"{stem}{ext}", sc.image)
            objs = []
            for s in sc.shapes:
                x0, y0, x1, y1 = (int(v) for v in s.box)
                objs.append(
                    f"  <object>\n    <name>{NAMES[s.cls]}</name>\n    <pose>Unspecified</pose>\n"
                    f"    <truncated>0</truncated>\n    <difficult>{int(s.cls == 1)}</difficult>\n"
                    f"    <bndbox>\n      <xmin>{x0 + 1}</xmin>\n      <ymin>{y0 + 1}</ymin>\n"
                    f"      <xmax>{x1}</xmax>\n      <ymax>{y1}</ymax>\n    </bndbox>\n  </object>\n"
                )
            xml = (
                f"<annotation>\n  <folder>JPEGImages</folder>\n  <filename>{stem}{ext}</filename>\n"
                f"  <size>\n    <width>{W}</width>\n    <height>{H}</height>\n    <depth>3</depth>\n  </size>\n"
                f"  <segmented>0</segmented>\n{''.join(objs)}</annotation>\n"
            )
            p = root / "Annotations" / f"{stem}.xml"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(xml)
        lst = root / "ImageSets" / "Main" / f"{split}.txt"
        lst.parent.mkdir(parents=True, exist_ok=True)
        lst.write_text("".join(f"{stem}\n" for stem in by_stem))
    return Built(root, scenes)


# ============================================================================= semantic masks

#: the palette of palette-mode masks: background black, then each class's drawn colour, 255 white
PALETTE = np.zeros((256, 3), np.uint8)
PALETTE[1 : 1 + len(COLORS)] = COLORS
PALETTE[255] = (255, 255, 255)


def masks_dataset(
    root: Path,
    *,
    splits: dict[str, int] | None = None,
    palette: bool = True,
    size: tuple[int, int] = (96, 72),
    ext: str = ".png",
    seed: int = 0,
) -> Built:
    """A semantic segmentation dataset: ``root/images/<split>/<stem><ext>`` and
    ``root/masks/<split>/<stem>.png`` (class-index PNGs: 0 background, class + 1 on each object; a
    palette PNG (:data:`PALETTE`) when ``palette``, else 8-bit greyscale) and ``root/classes.txt``
    (one name per mask value: ``background``, then :data:`NAMES`)."""
    from PIL import Image

    splits = splits or {"train": 3, "val": 1}
    scenes = _scenes(splits, 0, ext, size=size, seed=seed)
    for split, by_stem in scenes.items():
        for stem, sc in by_stem.items():
            write(root / "images" / split / f"{stem}{ext}", sc.image)
            p = root / "masks" / split / f"{stem}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            sem = sc.semantic()
            im = Image.frombytes("P" if palette else "L", (sem.shape[1], sem.shape[0]), sem.tobytes())
            if palette:
                im.putpalette(PALETTE.ravel().tolist())
            im.save(p)
    (root / "classes.txt").write_text("\n".join(["background", *NAMES]) + "\n")
    return Built(root, scenes)
