"""Feeding speed on the CPU (issue 19 items 1 and 3): one warp per sample, reading only what it reaches.

(a) Loader rates, steady state: ~200 500x375 JPEGs (benchmarks/photos.py) -> 224 px, recipe
    ``default``, uint8 output, 2 DataLoader workers, memory cache off (``memory_cache=0``: a dataset
    larger than memory). The first epoch is skipped (workers starting, page cache); the next epochs
    are timed. Contenders:
    - augkit: ``AugmentedImageFolder`` (fused, the default);
    - augkit fused=False: the step-by-step path (decode, resize, each step, resize + crop): before/after;
    - floor: decode (augkit's reduced decode), resize, centre crop, no augmentation at all;
    - torchvision: ``ImageFolder`` + transforms.v2 (RandomHorizontalFlip, RandomAffine, ColorJitter,
      GaussianBlur, Resize, CenterCrop, PILToTensor), the same recipe's ranges.
    Targets: augkit / floor >= 0.7x, augkit / torchvision >= 2.5x.
(b) Offline: CPU time per output (user + system of the whole command, resource.getrusage(RUSAGE_CHILDREN))
    of ``augkit augment --workers 1`` with a geometric recipe (flip + shift + rotate + affine) on the same
    photos, against a plain albumentations loop (cv2 read, the recipe exported to albumentations and
    applied step by step via A.Compose, JPEG write). Target: augkit <= 0.8x the plain loop.

Prints a markdown table and the load average. Run alone on a quiet machine (timings are meaningless
beside other work): ``.venv/bin/python benchmarks/bench_feed.py`` [--count 200 --epochs 3 --copies 3];
``--quick`` only checks that every contender runs (a handful of photos, one timed epoch). A benchmark,
never a test.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from bench_augment import PLAIN  # noqa: E402  (the plain loop: cv2 read, exported pipeline, JPEG write)
from photos import make_photos  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AUGKIT = [sys.executable, "-m", "augkit"]
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as on a user's machine

GEOMETRIC = """name: geometric
border: reflect
train:
  - flip: {direction: horizontal, p: 0.5}
  - shift: {x: 0.05, y: 0.05, p: 0.7}
  - rotate: {degrees: 15, p: 0.7}
  - affine: {scale: [0.9, 1.1], shear: 5, p: 0.7}
"""


# ====================================================================== (a) loaders


class Floor:
    """Decode (augkit's reduced decode), resize, centre crop: no augmentation."""

    def __init__(self, root: Path, size: int):
        from augkit.io.scan import scan_folder

        scan = scan_folder(str(root))
        self.paths = [os.path.join(root, *rel.split("/")) for rel, c in scan.items if c]
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch

        from augkit.io.images import read_image
        from augkit.io.preprocess import eval_image

        img = eval_image(read_image(self.paths[i], min_side=self.size), self.size)
        return torch.from_numpy(img).permute(2, 0, 1).contiguous(), 0


def torchvision_dataset(root: Path, size: int):
    import torch
    from torchvision import datasets
    from torchvision.transforms import v2

    tf = v2.Compose(
        [
            v2.RandomHorizontalFlip(0.5),
            v2.RandomApply([v2.RandomAffine(degrees=12, translate=(0.06, 0.06), scale=(0.9, 1.1))], p=0.7),
            v2.RandomApply([v2.ColorJitter(0.25, 0.25, 0.25, 0.03)], p=0.8),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.1),
            v2.Resize(size),
            v2.CenterCrop(size),
            v2.PILToTensor(),
        ]
    )
    torch.set_num_threads(1)
    return datasets.ImageFolder(str(root), transform=tf)


def loader_rate(dataset, epochs: int, batch: int, workers: int) -> float:
    """Images per second over ``epochs`` timed epochs, after one untimed epoch (steady state)."""
    import torch
    from torch.utils.data import DataLoader

    from augkit.io.images import opencv_threads

    with opencv_threads(1):  # set before the workers fork, as augkit train does
        dl = DataLoader(dataset, batch_size=batch, num_workers=workers, persistent_workers=workers > 0, shuffle=False)
        for epoch in range(epochs + 1):
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            if epoch == 1:
                t0, n = time.perf_counter(), 0
            for x, _ in dl:
                assert x.dtype == torch.uint8
                if epoch >= 1:
                    n += x.shape[0]
        return n / (time.perf_counter() - t0)


def bench_loaders(src: Path, args) -> dict[str, float]:
    from augkit.training.dataset import AugmentedImageFolder

    common = dict(image_size=args.size, output="uint8", memory_cache=0, check="none")
    contenders = {
        "augkit (fused)": lambda: AugmentedImageFolder(src, "default", **common),
        "augkit fused=False": lambda: AugmentedImageFolder(src, "default", fused=False, **common),
        "floor (decode, resize, crop)": lambda: Floor(src, args.size),
        "torchvision v2": lambda: torchvision_dataset(src, args.size),
    }
    rates = {}
    for name, make in contenders.items():
        rates[name] = loader_rate(make(), args.epochs, args.batch, args.workers)
        print(f"  {name}: {rates[name]:.1f} img/s", flush=True)
    return rates


# ====================================================================== (b) offline


def cpu_of(cmd: list[str]) -> float:
    """User + system CPU seconds of a whole child command (and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def bench_offline(tmp: Path, src: Path, count: int, copies: int) -> dict[str, float]:
    recipe, pipeline, script = tmp / "geometric.yaml", tmp / "geometric.json", tmp / "plain.py"
    recipe.write_text(GEOMETRIC)
    script.write_text(PLAIN)
    subprocess.run([*AUGKIT, "recipes", "export", str(recipe), "-o", str(pipeline)], check=True, cwd=ROOT, env=ENV,
                   capture_output=True)  # fmt: skip
    outputs = count * copies
    per = {
        "augkit augment --workers 1": cpu_of(
            [*AUGKIT, "augment", str(src), str(tmp / "aug"), "-r", str(recipe), "-n", str(copies), "-w", "1"]
        )
        / outputs,
        "plain albumentations loop": cpu_of(
            [sys.executable, str(script), str(src), str(tmp / "plain"), str(pipeline), str(copies), "0"]
        )
        / outputs,  # fmt: skip
    }
    for name, v in per.items():
        print(f"  {name}: {v * 1e3:.2f} ms CPU per output", flush=True)
    return per


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs after one untimed")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--copies", type=int, default=3, help="augment: copies per photo")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 16 photos, 1 timed epoch, 1 copy")
    args = ap.parse_args()
    if args.quick:
        args.count, args.epochs, args.batch, args.copies = 16, 1, 4, 1
    tmp = Path(tempfile.mkdtemp(prefix="augkit-feed-"))
    try:
        load0 = os.getloadavg()
        src = make_photos(tmp / "src", args.count, size=(500, 375))
        print(f"{args.count} photos 500x375 -> {args.size} px, {args.workers} workers, batch {args.batch}")
        rates = bench_loaders(src, args)
        cpu = bench_offline(tmp, src, args.count, args.copies)
        load1 = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    a = rates["augkit (fused)"]
    print("\n| contender | img/s | augkit / it |")
    print("| --- | ---: | ---: |")
    for name, r in rates.items():
        print(f"| {name} | {r:.1f} | {a / r:.2f}x |")
    floor, tv = rates["floor (decode, resize, crop)"], rates["torchvision v2"]
    print(f"\naugkit / floor: {a / floor:.2f}x (target >= 0.7x); augkit / torchvision: {a / tv:.2f}x (target >= 2.5x); "
          f"fused / step by step: {a / rates['augkit fused=False']:.2f}x")  # fmt: skip
    aug_cpu, plain_cpu = cpu["augkit augment --workers 1"], cpu["plain albumentations loop"]
    print("\n| offline, geometric recipe | CPU ms per output |")
    print("| --- | ---: |")
    for name, v in cpu.items():
        print(f"| {name} | {v * 1e3:.2f} |")
    print(f"\naugkit / plain: {aug_cpu / plain_cpu:.2f}x CPU per output (target <= 0.8x)")
    print(f"load average before {' '.join(f'{x:.2f}' for x in load0)}, after {' '.join(f'{x:.2f}' for x in load1)}; "
          f"cpus {os.cpu_count()}" + ("; --quick: a smoke run, not a measurement" if args.quick else ""))  # fmt: skip


if __name__ == "__main__":
    main()
