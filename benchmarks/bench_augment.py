"""Offline augmentation speed: ``augkit augment`` against what a user would otherwise run.

Side by side, in one run, every contender timed as a WHOLE process (interpreter start and imports
included), on the same JPEGs, with the same recipe:

(a) plain: a loop script a user would write: cv2 decode, the recipe exported to albumentations
    (``augkit recipes export``) and seeded per sample, cv2 encode, write + fsync (as augkit does);
(b) plain without fsync: the floor;
(c) ``augkit augment --workers 1`` and ``--workers 2`` (fresh DST each);
(d) the quick start's first augment command (``augkit augment samples OUT --copies 2``).

Targets (issue 8): (c) >= 0.9x (a) with 1 worker, >= 1.7x with 2 workers; (d) under 3 s.
Run alone on a quiet machine: .venv/bin/python benchmarks/bench_augment.py [--count 200 --copies 5]
(--count 12 --copies 1 --repeat 1 checks that it works). A benchmark, never a test.
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

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from photos import make_photos  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AUGKIT = [sys.executable, "-m", "augkit"]

PLAIN = r'''
"""What a user writes without augkit: decode, the exported albumentations pipeline, encode, write."""
import os, random, sys, time, zlib
import albumentations as A
import cv2
import numpy as np
src, dst, pipeline, copies, fsync = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
aug = A.load(pipeline)
t0 = time.perf_counter()
n = 0
for root, _, names in sorted(os.walk(src)):
    for name in sorted(names):
        if not name.endswith(".jpg"):
            continue
        img = cv2.cvtColor(cv2.imread(os.path.join(root, name)), cv2.COLOR_BGR2RGB)
        out_dir = os.path.join(dst, os.path.relpath(root, src))
        os.makedirs(out_dir, exist_ok=True)
        for k in range(copies):
            seed = zlib.crc32(f"{name}:{k}".encode())
            aug.set_random_state(np.random.default_rng(seed), random.Random(seed))
            out = aug(image=img)["image"]
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            with open(os.path.join(out_dir, f"{name[:-4]}__aug{k}.jpg"), "wb") as fh:
                fh.write(buf.tobytes())
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            n += 1
print(f"inner {n / (time.perf_counter() - t0):.1f}")
'''


#: Every contender runs as on a user's machine, where Python caches compiled modules: a sandbox's
#: PYTHONDONTWRITEBYTECODE=1 would recompile augkit's ~60 modules in every process, parent and
#: workers (the plain script's libraries come precompiled by pip either way).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(cmd: list[str], cwd: Path = ROOT) -> tuple[float, str]:
    """Wall time of a whole command, and its stdout."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return took, proc.stdout


def contenders(tmp: Path, src: Path, copies: int, recipe: str) -> dict[str, callable]:
    script, pipeline = tmp / "plain.py", tmp / "pipeline.json"
    script.write_text(PLAIN)
    subprocess.run(
        [*AUGKIT, "recipes", "export", recipe, "-o", str(pipeline)], check=True, cwd=ROOT, capture_output=True
    )
    fresh = lambda name: str(tmp / "out" / f"{name}-{time.perf_counter_ns()}")  # noqa: E731
    aug = [*AUGKIT, "augment", str(src)]
    opts = ["--copies", str(copies), "--recipe", recipe]
    return {
        "plain (fsync)": lambda: timed(
            [sys.executable, str(script), str(src), fresh("p"), str(pipeline), str(copies), "1"]
        ),
        "plain, no fsync (floor)": lambda: timed(
            [sys.executable, str(script), str(src), fresh("f"), str(pipeline), str(copies), "0"]
        ),
        "augkit --workers 1": lambda: timed([*aug, fresh("w1"), *opts, "--workers", "1"]),
        "augkit --workers 2": lambda: timed([*aug, fresh("w2"), *opts, "--workers", "2"]),
        "quick start (samples, 2 copies)": lambda: timed([*AUGKIT, "augment", "samples", fresh("q"), "--copies", "2"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--copies", type=int, default=5)
    ap.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(500, 375),
        metavar=("W", "H"),
        help="photo size (default 500x375, as in issue 8's measurements; try 1024 768, 4032 3024)",
    )
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--repeat", type=int, default=5, help="rounds; each contender's median is reported")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="augkit-bench-"))
    try:
        src = make_photos(tmp / "src", args.count, size=tuple(args.size))
        runs = contenders(tmp, src, args.copies, args.recipe)
        load0 = os.getloadavg()
        times: dict[str, list[float]] = {k: [] for k in runs}
        inner: list[float] = []
        for _ in range(args.repeat):  # interleaved rounds: drift hits every contender alike
            for name, fn in runs.items():
                took, out = fn()
                times[name].append(took)
                if name == "plain (fsync)":
                    inner.append(float(out.split()[-1]))
                shutil.rmtree(tmp / "out", ignore_errors=True)
                os.sync()  # the deletions' disk work is done before the next contender starts
        report(args, {k: statistics.median(v) for k, v in times.items()}, statistics.median(inner), load0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(args, med: dict[str, float], inner: float, load0: tuple[float, float, float]) -> None:
    n = args.count * args.copies
    plain = n / med["plain (fsync)"]
    print(
        f"{args.count} JPEGs {args.size[0]}x{args.size[1]} x {args.copies} copies = {n} outputs, recipe "
        f"{args.recipe}, {os.cpu_count()} cpus, median of {args.repeat}; whole processes timed"
    )
    print(
        f"load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; after: "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    targets = {"augkit --workers 1": 0.9, "augkit --workers 2": 1.7}
    for name, took in med.items():
        if name.startswith("quick start"):
            continue
        rate = n / took
        tgt = f"  (target >= {targets[name]}x)" if name in targets else ""
        print(
            f"  {name:<26} {took:6.2f} s  {rate:7.1f} img/s  = {rate / plain:4.2f}x plain, "
            f"{rate / inner:4.2f}x plain's loop alone{tgt}"
        )
    print(f"  plain's loop alone (imports excluded): {inner:.1f} img/s")
    q = med["quick start (samples, 2 copies)"]
    print(f"  quick start: {q:.2f} s (target < 3 s)")


if __name__ == "__main__":
    main()
