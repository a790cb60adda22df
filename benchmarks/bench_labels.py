"""Augmenting a labelled detection dataset: what the labels cost, and augkit against a plain loop.

Side by side, in one run, every contender timed as a WHOLE process (interpreter start and imports
included), on the same YOLO detection dataset (``samples/make_labelled.py``: sample photos pasted on
sample photos, 2-3 boxes per image, JPEG), with the same recipe (``border: constant``, as labelled
data gets by default, so the image-only run does the same pixel work):

(a) ``augkit augment DATA --labels yolo`` (train split only; no val split, so nothing is copied),
    ``--workers 1`` and ``--workers 2``;
(b) ``augkit augment IMAGES`` on the same JPEGs as a flat folder, without labels, same workers;
(c) plain: the loop a user writes with albumentations' own box support: read the YOLO rows, the
    recipe exported with ``augkit recipes export --labels yolo`` (BboxParams in YOLO format) and
    seeded per sample, cv2 decode/encode, write the image and its label file (+ fsync, as augkit does).

Targets (issue 18): (a) <= 1.2x the time of (b) at the same worker count; (a) with 1 worker at least
as fast as (c), i.e. (c)/(a) >= 1.0.
Rounds alternate in order (every other one reversed) so that the machine's drift hits all alike; the
ratios are given both as ratios of medians and per round (paired). Outputs are kept until the end (a
few GB): deleting each contender's 800-1600 files before the next made ext4's inode allocator skip
recently deleted inodes at every creation (perf: find_inode_bit, recently_deleted): 2.7-3.7 ms of CPU
per labelled output, 1.4-2.1 ms per image-only one (perf stat, whole process tree), an artefact of the
benchmark's own cleanup that the earlier runs in benchmarks/README.md paid.
Run alone on a quiet machine: .venv/bin/python benchmarks/bench_labels.py [--count 200 --copies 4]
(--count 5 --copies 1 --repeat 1 checks that it works, in about 10 s). A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).resolve().parents[1]
AUGKIT = [sys.executable, "-m", "augkit"]
#: the default recipe's steps, with the border labelled data gets (constant) for every contender
RECIPE = """name: bench-labels
border: constant
train:
  - flip: {direction: horizontal, p: 0.5}
  - affine: {scale: [0.9, 1.1], translate: 0.06, rotate: 12, p: 0.7}
  - one_of:
      p: 0.8
      weights: [2, 1]
      steps:
        - color: {brightness: 0.25, contrast: 0.25, saturation: 0.25, hue: 0.03}
        - linear: {a: [0.8, 1.2], b: [-20, 20]}
  - albumentations: {transform: GaussianBlur, blur_limit: [3, 5], p: 0.1}
"""

PLAIN = r'''
"""What a user writes without augkit: YOLO rows in, albumentations with BboxParams, image and rows out."""
import os, random, sys, time, zlib
import albumentations as A
import cv2
import numpy as np
src, dst, pipeline, copies = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
aug = A.load(pipeline)
t0 = time.perf_counter()
n = 0
img_dir, lbl_dir = os.path.join(src, "images", "train"), os.path.join(src, "labels", "train")
out_img, out_lbl = os.path.join(dst, "images", "train"), os.path.join(dst, "labels", "train")
os.makedirs(out_img, exist_ok=True)
os.makedirs(out_lbl, exist_ok=True)


def write(path, data):
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


for name in sorted(os.listdir(img_dir)):
    stem = name.rsplit(".", 1)[0]
    img = cv2.cvtColor(cv2.imread(os.path.join(img_dir, name)), cv2.COLOR_BGR2RGB)
    boxes, classes = [], []
    lbl = os.path.join(lbl_dir, stem + ".txt")
    if os.path.exists(lbl):
        for line in open(lbl):
            v = line.split()
            if v:
                classes.append(int(v[0]))
                boxes.append([float(x) for x in v[1:5]])
    for k in range(copies):
        seed = zlib.crc32(f"{name}:{k}".encode())
        aug.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = aug(image=img, bboxes=np.array(boxes).reshape(-1, 4), class_labels=classes)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out["image"], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        rows = "".join(f"{c} " + " ".join(f"{x:.6f}" for x in b) + "\n" for c, b in zip(out["class_labels"], out["bboxes"]))
        write(os.path.join(out_lbl, f"{stem}__aug{k}.txt"), rows.encode())
        write(os.path.join(out_img, f"{stem}__aug{k}.jpg"), buf.tobytes())
        n += 1
print(f"inner {n / (time.perf_counter() - t0):.1f}")
'''

#: as in bench_augment.py: compiled modules are cached, as on a user's machine
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(cmd: list[str]) -> tuple[float, str]:
    """Wall time of a whole command, and its stdout."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return took, proc.stdout


def make_data(tmp: Path, count: int, size: tuple[int, int]) -> tuple[Path, Path]:
    """The YOLO dataset (train split only) and the same JPEGs as a flat folder."""
    data = tmp / "yolo"
    subprocess.run(
        [sys.executable, "-m", "samples.make_labelled", "yolo", str(data), "--train", str(count), "--val", "0",
         "--size", str(size[0]), str(size[1]), "--samples", str(ROOT / "samples")],
        cwd=ROOT, check=True, capture_output=True, env=dict(ENV, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    flat = tmp / "images"
    flat.mkdir()
    for p in sorted((data / "images" / "train").iterdir()):
        shutil.copyfile(p, flat / p.name)
    return data, flat


def contenders(tmp: Path, data: Path, flat: Path, copies: int) -> dict:
    recipe, script, pipeline = tmp / "recipe.yaml", tmp / "plain.py", tmp / "pipeline.json"
    recipe.write_text(RECIPE)
    script.write_text(PLAIN)
    subprocess.run(
        [*AUGKIT, "recipes", "export", str(recipe), "-o", str(pipeline), "--labels", "yolo"],
        check=True, cwd=ROOT, capture_output=True, env=ENV,
    )  # fmt: skip
    fresh = lambda name: str(tmp / "out" / f"{name}-{time.perf_counter_ns()}")  # noqa: E731
    opts = ["--copies", str(copies), "--recipe", str(recipe)]
    runs = {"plain albumentations + BboxParams": lambda: timed([sys.executable, str(script), str(data),
                                                                 fresh("p"), str(pipeline), str(copies)])}  # fmt: skip
    for w in (1, 2):
        runs[f"augkit labels --workers {w}"] = lambda w=w: timed(
            [*AUGKIT, "augment", str(data), fresh(f"l{w}"), "--labels", "yolo", *opts, "--workers", str(w)]
        )
        runs[f"augkit images only --workers {w}"] = lambda w=w: timed(
            [*AUGKIT, "augment", str(flat), fresh(f"i{w}"), *opts, "--workers", str(w)]
        )
    return runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200, help="training images")
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    ap.add_argument("--repeat", type=int, default=3, help="rounds; each contender's median is reported")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="augkit-bench-labels-"))
    try:
        data, flat = make_data(tmp, args.count, tuple(args.size))
        runs = contenders(tmp, data, flat, args.copies)
        load0 = os.getloadavg()
        times: dict[str, list[float]] = {k: [] for k in runs}
        inner: list[float] = []
        for r in range(args.repeat):  # interleaved rounds, every other one in reverse order: drift hits all alike
            for name, fn in list(runs.items())[:: -1 if r % 2 else 1]:
                took, out = fn()
                times[name].append(took)
                if name.startswith("plain"):
                    inner.append(float(out.split()[-1]))
                # outputs stay until the end (~0.3 GB per round): deleting thousands of files just before
                # a run makes ext4 skip the recently deleted inodes at every file it creates
                # (find_inode_bit / recently_deleted), which cost the run with twice the files most
                os.sync()  # the next contender does not pay for this one's writeback
        report(args, times, statistics.median(inner), load0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(args, times: dict[str, list[float]], inner: float, load0) -> None:
    n = args.count * args.copies
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"YOLO detection, {args.count} JPEGs {args.size[0]}x{args.size[1]} (2-3 boxes each) x {args.copies} copies "
        f"= {n} outputs, {os.cpu_count()} cpus, median of {args.repeat}; whole processes timed"
    )
    print(
        f"load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; after: "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    plain = med["plain albumentations + BboxParams"]
    for name, took in med.items():
        print(f"  {name:<36} {took:6.2f} s  {n / took:7.1f} img/s")
    print(f"  plain's loop alone (imports excluded): {inner:.1f} img/s")
    for w in (1, 2):
        lab, img = med[f"augkit labels --workers {w}"], med[f"augkit images only --workers {w}"]
        paired = [
            a / b for a, b in zip(times[f"augkit labels --workers {w}"], times[f"augkit images only --workers {w}"])
        ]
        print(
            f"  labels / images only, {w} worker(s): {lab / img:4.2f}x time (target <= 1.2x); per round "
            + " ".join(f"{x:.2f}" for x in paired)
            + f", median {statistics.median(paired):.2f}x"
        )
        print(f"  plain / augkit labels, {w} worker(s): {plain / lab:4.2f}x speed (target >= 1.0x)")


if __name__ == "__main__":
    main()
