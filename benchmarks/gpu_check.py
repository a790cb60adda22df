"""One-file GPU check for issue 19 (a lent H100/H200 with ~16 cores; one prepared run, under 5 minutes).

Trains ResNet-18 and ResNet-50 at 224 px (``--precision auto``'s choice: bf16 autocast + channels_last
on such a GPU, AdamW) and prints images per second, steady state, for three feeds:

- ``tensors``: pre-decoded uint8 batches in pinned host memory (no loader work: the ceiling);
- ``cpu``: ``--decode cpu``: AugmentedImageFolder (recipe ``default``, uint8, memory cache off: a dataset
  larger than memory) in ``--workers`` DataLoader processes, through the side-stream prefetcher;
- ``gpu``: ``--decode gpu``: the workers only plan (bytes, one matrix, the draws); nvJPEG decode, one
  grid_sample and the colour steps on the device (augkit.training.gpu_decode).

and the ratios cpu/tensors, gpu/tensors (issue 19's targets: ResNet-50 >= 0.9x, ResNet-18 >= 0.7x for
cpu; >= 0.9x for both with gpu). The photos are synthetic 500x375 JPEGs it writes itself (smooth
colour fields, edges and noise; no downloads). Each contender: one untimed pass (workers start,
cuDNN picks): 2 untimed steps, then ``--steps`` timed steps.

``--dry-run``: the same code on the CPU, tiny (16 photos of 96x72, 32 px, ResNet-18, 2 steps, 0
workers): checks that every contender runs; its numbers mean nothing. A benchmark, never a test.

    .venv/bin/python benchmarks/gpu_check.py --dry-run
    python benchmarks/gpu_check.py --workers 15            # on the GPU machine
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from augkit.io.images import opencv_threads  # noqa: E402
from augkit.models.archs import build_model  # noqa: E402
from augkit.training.config import TrainConfig  # noqa: E402
from augkit.training.dataset import AugmentedImageFolder  # noqa: E402
from augkit.training.gpu_decode import DeviceDecoder, GpuDecodeFolder, check_recipe, collate  # noqa: E402
from augkit.training.loop import make_optimizer, train_one_epoch  # noqa: E402
from augkit.training.precision import choose_precision, model_kind  # noqa: E402


def write_photos(root: Path, count: int, size: tuple[int, int], classes: int = 10) -> Path:
    """``count`` synthetic photos-like JPEGs (quality 90): smooth colour fields, a few shapes, noise."""
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(count):
        c = rng.uniform(0, 255, (3, 3)).astype(np.float32)
        img = np.stack([c[k, 0] + (c[k, 1] - c[k, 0]) * xx / w + (c[k, 2] - c[k, 0]) * yy / h for k in range(3)], -1)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            r = int(rng.integers(h // 10, h // 3))
            cv2.circle(img, (x0, y0), r, rng.uniform(0, 255, 3).tolist(), -1)
        img += rng.normal(0, 8, img.shape).astype(np.float32)
        out = root / f"class{i % classes}" / f"img{i:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        bgr = np.clip(img, 0, 255).astype(np.uint8)
        if not cv2.imwrite(str(out), bgr, [cv2.IMWRITE_JPEG_QUALITY, 90]):
            raise OSError(f"could not write {out}")
    return root


def rate(model, batches, optimizer, device, precision, steps: int, decode=None) -> float:
    """Images per second over ``steps`` steps of ``batches``, after 2 untimed steps of the same iterator."""
    it = iter(batches)
    warm = list(itertools.islice(it, 2))
    train_one_epoch(model, warm, optimizer, device, precision=precision, decode=decode)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timed = itertools.islice(it, steps)
    start = time.perf_counter()
    res = train_one_epoch(model, timed, optimizer, device, precision=precision, decode=decode)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return res["images"] / (time.perf_counter() - start)


def forever(loader):
    while True:
        yield from loader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny, on the CPU: checks that everything runs")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--count", type=int, default=2048, help="photos to write")
    ap.add_argument("--archs", default="resnet18,resnet50")
    args = ap.parse_args()
    if args.dry_run:
        args.workers, args.batch_size, args.steps, args.count, args.archs = 0, 4, 2, 16, "resnet18"
    size, photo = (32, (96, 72)) if args.dry_run else (224, (500, 375))
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        print(f"# {torch.cuda.get_device_name(device)}, torch {torch.__version__}, {os.cpu_count()} cores")
    else:
        print(f"# CPU only (dry run: the numbers mean nothing), torch {torch.__version__}")
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        run(args, tmp, size, photo, device)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"# workers {args.workers}, batch {args.batch_size}, {args.steps} timed steps, load {os.getloadavg()}")


def run(args, tmp: Path, size: int, photo: tuple[int, int], device: torch.device) -> None:
    root = write_photos(tmp, args.count, photo)
    folder = AugmentedImageFolder(root, "default", image_size=size, output="uint8", memory_cache=0, check="none")
    decoder = DeviceDecoder(check_recipe(folder.recipe), size)
    pin = device.type == "cuda"
    common = dict(batch_size=args.batch_size, shuffle=True, num_workers=args.workers, pin_memory=pin, drop_last=True,
                  persistent_workers=args.workers > 0)  # fmt: skip
    if args.workers:
        common["prefetch_factor"] = 4
    cpu_loader = DataLoader(folder, **common)
    gpu_loader = DataLoader(GpuDecodeFolder(folder), collate_fn=collate, **common)
    x = torch.randint(0, 256, (args.batch_size, 3, size, size), dtype=torch.uint8)
    y = torch.randint(0, 10, (args.batch_size,))
    tensors = [(x.pin_memory() if pin else x, y)] * (args.steps + 2)
    print("| model | tensors img/s | --decode cpu img/s | --decode gpu img/s | cpu/tensors | gpu/tensors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    with opencv_threads(1):  # as augkit train: one OpenCV thread, set before workers fork
        for arch in args.archs.split(","):
            model = build_model(arch, 10).to(device)
            precision = choose_precision("auto", device, size, kind=model_kind(model))
            if precision.channels_last:
                model = model.to(memory_format=torch.channels_last)
            cfg = TrainConfig(data=root, out=root / "run", arch=arch, lr=1e-3)
            opt = make_optimizer(model, cfg)
            t = rate(model, tensors, opt, device, precision, args.steps)
            c = rate(model, forever(cpu_loader), opt, device, precision, args.steps)
            g = rate(model, forever(gpu_loader), opt, device, precision, args.steps, decode=decoder)
            print(f"| {arch} ({precision.name}) | {t:.0f} | {c:.0f} | {g:.0f} | {c / t:.2f}x | {g / t:.2f}x |")


if __name__ == "__main__":
    main()
