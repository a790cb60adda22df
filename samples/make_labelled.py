"""Write a small labelled dataset (YOLO, COCO, Pascal VOC or mask folders) made from the sample photos.

The sample photos have no labels, so this script makes a *collage* dataset whose labels are exact:
each image is one sample photo (the background) with two or three other sample photos pasted on it
at known places, each pasted photo an object of its class (the class folder it comes from:
astronaut, cat, coffee, rocket). Objects are rectangles (``--shape box``) or ellipses
(``--shape ellipse``, with their outline as a polygon: segmentation) and, for pose datasets
(``yolo-pose``, ``coco`` with ``--keypoints``), carry three keypoints: ``left_side``, ``right_side``
(mirror images of each other under a horizontal flip) and ``centre``. No two objects overlap.

Nothing is random but the seeded layout: the same arguments write the same files.

Usage (from the repository; needs only augkit's own dependencies)::

    python -m samples.make_labelled yolo data-yolo            # detection, train 12 + val 4 images
    python -m samples.make_labelled yolo-seg data-seg         # YOLO segmentation (ellipse outlines)
    python -m samples.make_labelled yolo-pose data-pose       # YOLO pose (kpt_shape [3, 3], flip_idx)
    python -m samples.make_labelled coco data-coco --keypoints
    python -m samples.make_labelled voc data-voc
    python -m samples.make_labelled masks data-masks          # images/ + masks/ (palette PNGs)

Options: ``--samples DIR`` (default: the ``samples`` folder in the working directory, else the one
beside this script), ``--train N --val N``, ``--size W H`` (default 320 240), ``--seed N``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

KINDS = ("yolo", "yolo-seg", "yolo-pose", "coco", "voc", "masks")
KEYPOINTS = ["left_side", "right_side", "centre"]
FLIP_IDX = [1, 0, 2]
SKELETON = [[1, 3], [2, 3]]  # COCO: 1-based
ELLIPSE_POINTS = 32


def sample_photos(folder: Path) -> tuple[list[str], list[tuple[int, np.ndarray]]]:
    """Class names (sorted class folders) and every (class id, RGB photo)."""
    names = sorted(  # class folders: those holding photos (never __pycache__ and the like)
        p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and any(p.glob("*.jpg"))
    )
    photos = []
    for cls, name in enumerate(names):
        for f in sorted((folder / name).glob("*.jpg")):
            img = cv2.imdecode(np.fromfile(f, np.uint8), cv2.IMREAD_COLOR)
            if img is not None:
                photos.append((cls, cv2.cvtColor(img, cv2.COLOR_BGR2RGB)))
    if not photos:
        sys.exit(f"no sample photos (class folders of .jpg) in {folder}")
    return names, photos


def _ellipse(cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, ELLIPSE_POINTS, endpoint=False)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], 1)


def _fill(shape: tuple[int, int], poly: np.ndarray) -> np.ndarray:
    """Pixels whose centres lie inside ``poly`` (pixel-edge coordinates)."""
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round((poly - 0.5) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return m.astype(bool)


def make_image(index: int, photos, size: tuple[int, int], shape: str, rng: np.random.Generator) -> tuple:
    """(RGB image, objects): each object a dict with cls, box (x0, y0, x1, y1 in pixels), polygon,
    mask (bool) and keypoints ((3, 3) x, y, v)."""
    W, H = size
    _, bg = photos[index % len(photos)]
    img = cv2.resize(bg, (W, H), interpolation=cv2.INTER_AREA)
    n = 2 + index % 2
    picks = rng.choice([i for i in range(len(photos)) if i != index % len(photos)], n, replace=False)
    objects = []
    for k, p in enumerate(picks):
        cls, photo = photos[int(p)]
        x_lo, x_hi = 4 + k * (W - 8) // n, 4 + (k + 1) * (W - 8) // n  # one column each: no overlaps
        w = int(rng.integers((x_hi - x_lo) * 5 // 10, x_hi - x_lo - 2))
        h = int(min(H - 8, round(w * photo.shape[0] / photo.shape[1] * rng.uniform(0.9, 1.1))))
        x0 = x_lo + int(rng.integers(0, x_hi - x_lo - w))
        y0 = 4 + int(rng.integers(0, H - 8 - h + 1))
        patch = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
        if shape == "ellipse":
            poly = _ellipse(x0 + w / 2, y0 + h / 2, w / 2, h / 2)
            mask = _fill((H, W), poly)
        else:
            poly = np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]], np.float64)
            mask = np.zeros((H, W), bool)
            mask[y0 : y0 + h, x0 : x0 + w] = True
        canvas = img.copy()
        canvas[y0 : y0 + h, x0 : x0 + w] = patch
        img[mask] = canvas[mask]
        ys, xs = np.nonzero(mask)
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        cy = y0 + h / 2
        kp = np.array([[x0 + 0.2 * w, cy, 2], [x0 + 0.8 * w, cy, 2], [x0 + 0.5 * w, y0 + 0.3 * h, 2]])
        objects.append({"cls": cls, "box": box, "polygon": poly, "mask": mask, "keypoints": kp})
    return img, objects


def _write_jpeg(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    path.write_bytes(buf.tobytes())


def write_dataset(kind: str, dst: Path, samples: Path, splits: dict[str, int], size, seed: int, keypoints: bool):
    names, photos = sample_photos(samples)
    shape = "ellipse" if kind in ("yolo-seg", "masks") or (kind == "coco" and not keypoints) else "box"
    rng = np.random.default_rng(seed)
    W, H = size
    index = 0
    coco_ann = 1
    for split, count in splits.items():
        images, anns, listing = [], [], []
        for i in range(count):
            img, objs = make_image(index, photos, size, shape, rng)
            stem = f"{split}_{i:03d}"
            index += 1
            listing.append(stem)
            if kind.startswith("yolo"):
                _write_jpeg(dst / "images" / split / f"{stem}.jpg", img)
                rows = []
                for o in objs:
                    x0, y0, x1, y1 = o["box"]
                    box = [(x0 + x1) / 2 / W, (y0 + y1) / 2 / H, (x1 - x0) / W, (y1 - y0) / H]
                    if kind == "yolo-seg":
                        vals = (o["polygon"] / [W, H]).clip(0, 1).ravel().tolist()
                    elif kind == "yolo-pose":
                        vals = box + [v for x, y, s in o["keypoints"] for v in (x / W, y / H, s)]
                    else:
                        vals = box
                    rows.append(" ".join([str(o["cls"])] + [f"{v:.6f}" for v in vals]))
                lbl = dst / "labels" / split / f"{stem}.txt"
                lbl.parent.mkdir(parents=True, exist_ok=True)
                lbl.write_text("".join(r + "\n" for r in rows))
            elif kind == "coco":
                _write_jpeg(dst / "images" / split / f"{stem}.jpg", img)
                images.append({"id": index, "file_name": f"{stem}.jpg", "width": W, "height": H})
                for o in objs:
                    x0, y0, x1, y1 = o["box"]
                    a = {"id": coco_ann, "image_id": index, "category_id": o["cls"] + 1,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(o["mask"].sum()), "iscrowd": 0,
                         "segmentation": [[round(float(v), 2) for v in o["polygon"].ravel()]]}  # fmt: skip
                    if keypoints:
                        a["keypoints"] = [round(float(v), 2) for v in o["keypoints"].ravel()]
                        a["num_keypoints"] = len(KEYPOINTS)
                    anns.append(a)
                    coco_ann += 1
            elif kind == "voc":
                _write_jpeg(dst / "JPEGImages" / f"{stem}.jpg", img)
                objs_xml = "".join(
                    f"  <object>\n    <name>{names[o['cls']]}</name>\n    <truncated>0</truncated>\n"
                    f"    <difficult>0</difficult>\n    <bndbox>\n      <xmin>{o['box'][0] + 1}</xmin>\n"
                    f"      <ymin>{o['box'][1] + 1}</ymin>\n      <xmax>{o['box'][2]}</xmax>\n"
                    f"      <ymax>{o['box'][3]}</ymax>\n    </bndbox>\n  </object>\n"
                    for o in objs
                )
                xml = (
                    f"<annotation>\n  <folder>JPEGImages</folder>\n  <filename>{stem}.jpg</filename>\n"
                    f"  <size>\n    <width>{W}</width>\n    <height>{H}</height>\n    <depth>3</depth>\n"
                    f"  </size>\n{objs_xml}</annotation>\n"
                )
                (dst / "Annotations").mkdir(parents=True, exist_ok=True)
                (dst / "Annotations" / f"{stem}.xml").write_text(xml)
            else:  # masks
                from PIL import Image  # Pillow comes with torchvision

                _write_jpeg(dst / "images" / split / f"{stem}.jpg", img)
                sem = np.zeros((H, W), np.uint8)
                for o in objs:
                    sem[o["mask"]] = o["cls"] + 1
                pal = Image.frombytes("P", (W, H), sem.tobytes())
                colors = [0, 0, 0, 31, 119, 180, 255, 127, 14, 44, 160, 44, 214, 39, 40]
                pal.putpalette(colors + [0] * (768 - len(colors) - 3) + [255, 255, 255])
                out = dst / "masks" / split / f"{stem}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                pal.save(out)
        if kind == "coco":
            cats = [{"id": c + 1, "name": n, "supercategory": "sample"} for c, n in enumerate(names)]
            if keypoints:
                for c in cats:
                    c["keypoints"], c["skeleton"] = list(KEYPOINTS), [list(e) for e in SKELETON]
            doc = {"info": {"description": "augkit samples collage"}, "licenses": [], "images": images,
                   "annotations": anns, "categories": cats}  # fmt: skip
            (dst / "annotations").mkdir(parents=True, exist_ok=True)
            (dst / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
        if kind == "voc":
            (dst / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
            (dst / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(s + "\n" for s in listing))
    if kind.startswith("yolo"):
        data: dict = {s: f"images/{s}" for s in splits}
        data["names"] = dict(enumerate(names))
        if kind == "yolo-pose":
            data["kpt_shape"], data["flip_idx"] = [len(KEYPOINTS), 3], FLIP_IDX
        (dst / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    if kind == "masks":
        (dst / "classes.txt").write_text("\n".join(["background", *names]) + "\n")
    return dst


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--samples", type=Path, default=None)
    ap.add_argument("--train", type=int, default=12)
    ap.add_argument("--val", type=int, default=4)
    ap.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keypoints", action="store_true", help="coco: objects carry 3 keypoints")
    a = ap.parse_args(argv)
    samples = a.samples or next(
        (p for p in (Path("samples"), Path(__file__).resolve().parent) if p.is_dir() and any(p.glob("*/*.jpg"))),
        Path("samples"),
    )
    if a.dst.exists() and any(a.dst.iterdir()):
        sys.exit(f"{a.dst} exists and is not empty")
    splits = {"train": a.train, "val": a.val} if a.val else {"train": a.train}
    write_dataset(a.kind, a.dst, samples, splits, tuple(a.size), a.seed, a.keypoints)
    print(f"wrote a {a.kind} dataset ({a.train} train, {a.val} val images) to {a.dst}")


if __name__ == "__main__":
    main()
