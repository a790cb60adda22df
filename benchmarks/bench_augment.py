"""Offline augmentation speed: augkit augment vs a bare loop (the floor) and vs Augmentor.

(a) floor: one process, read -> decode -> the same albumentations pipeline -> encode -> write;
(b) augkit augment with 1 and 2 workers (same recipe, same images);
(c) Augmentor's closest pipeline (flip, rotate, zoom, brightness, contrast, color), if installed.

Run: .venv/bin/python benchmarks/bench_augment.py [--count 300] [--copies 1]
Prints images/s and the ratios; a benchmark, never a test.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from photos import make_photos  # noqa: E402

from augkit.augment import AugmentOptions, make_plan, run_plan  # noqa: E402
from augkit.images import decode_image, encode_image, read_bytes, scan_folder  # noqa: E402
from augkit.recipe import load_recipe  # noqa: E402
from augkit.seeding import derive_seed  # noqa: E402


def floor(src: Path, dst: Path, recipe, copies: int) -> float:
    aug = recipe.build()
    items = scan_folder(src).items
    t0 = time.perf_counter()
    for rel, _ in items:
        img = decode_image(read_bytes(src / rel))
        for k in range(copies):
            out, _ = aug(img, derive_seed(0, rel, k))
            p = dst / f"{rel[:-4]}__aug{k}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(encode_image(out, ".jpg"))
    return len(items) * copies / (time.perf_counter() - t0)


def augkit_rate(src: Path, dst: Path, recipe, copies: int, workers: int) -> float:
    plan = make_plan(src, dst, recipe, AugmentOptions(copies=copies, workers=workers))
    t0 = time.perf_counter()
    r = run_plan(plan)
    assert r.exit_code == 0 and r.written == len(plan.items)
    return r.written / (time.perf_counter() - t0)


def augmentor_rate(src: Path, dst: Path, copies: int) -> float | None:
    try:
        import Augmentor
    except ImportError:
        return None
    n = sum(1 for _ in src.rglob("*.jpg"))
    p = Augmentor.Pipeline(str(src), output_directory=str(dst), save_format="JPEG")
    p.flip_left_right(probability=0.5)
    p.rotate(probability=0.7, max_left_rotation=12, max_right_rotation=12)
    p.zoom(probability=0.7, min_factor=1.0, max_factor=1.1)
    p.random_brightness(probability=0.4, min_factor=0.75, max_factor=1.25)
    p.random_contrast(probability=0.4, min_factor=0.75, max_factor=1.25)
    p.random_color(probability=0.4, min_factor=0.75, max_factor=1.25)
    t0 = time.perf_counter()
    p.sample(n * copies, multi_threaded=True)
    return n * copies / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--recipe", default="default")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="augkit-bench-"))
    try:
        src = make_photos(tmp / "src", args.count)
        recipe = load_recipe(args.recipe)
        augkit_rate(src, tmp / "warm", recipe, 1, 2)  # warm the page cache and the fork server
        import cv2
        f_mt = floor(src, tmp / "floor_mt", recipe, args.copies)  # OpenCV's default thread pool
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        f = floor(src, tmp / "floor", recipe, args.copies)  # one core: the per-process floor
        cv2.setNumThreads(threads)
        a1 = augkit_rate(src, tmp / "w1", recipe, args.copies, 1)
        a2 = augkit_rate(src, tmp / "w2", recipe, args.copies, 2)
        am = augmentor_rate(src, tmp / "augmentor", args.copies)
        print(f"images: {args.count} JPEGs 500x375, copies {args.copies}, recipe {args.recipe}, cpus {os.cpu_count()}")
        print(f"floor (bare loop, 1 process, OpenCV {threads} threads): {f_mt:7.1f} img/s")
        print(f"floor (bare loop, 1 process, OpenCV 1 thread):  {f:7.1f} img/s  <- reference")
        print(f"augkit --workers 1:           {a1:7.1f} img/s  = {a1 / f:.2f}x floor (target >= 0.9x)")
        print(f"augkit --workers 2:           {a2:7.1f} img/s  = {a2 / f:.2f}x floor (target >= 1.7x)")
        if am is None:
            print("Augmentor: not installed (pip install Augmentor)")
        else:
            print(f"Augmentor (multi-threaded):   {am:7.1f} img/s  augkit 2 workers = {a2 / am:.2f}x Augmentor")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
