"""Benchmark: does bfloat16 training reach float32's accuracy, and how much faster is it (issue 17)?

    .venv/bin/python benchmarks/bench_precision.py [--size 112] [--per-class 60] [--epochs 6] [--seeds 0,1,2]
    .venv/bin/python benchmarks/bench_precision.py --size 96 --digits 0,1,7 --per-class 30 --epochs 3  # a small run

The question behind ``--precision auto``: on a CPU with native bfloat16 (AVX512-BF16 or AMX) it
trains in bf16 from :data:`augkit.training.precision.BF16_MIN_SIZE` (96 px) up. For each seed this
trains the same ResNet-18 from scratch on the same digits (scikit-learn's handwritten digits,
upscaled to ``--size``; 25% of them held out for validation, which picks ``best.pt``) once with
``--precision fp32`` and once with ``--precision bf16``, then measures ``best.pt`` on test digits
that neither training nor validation saw (all the remaining ones of the chosen digits, or
``--test-per-class``). Reported per run: held-out accuracy, wall seconds of ``train()``, training
images/s (median over epochs); then the mean per precision and the per-seed accuracy gaps.

Read the CPU line first: on a CPU without native bf16, torch emulates it and bf16 is slower; the
accuracy comparison still holds. Timings need a quiet machine (nothing else running): the runs of
one seed alternate fp32/bf16 so that other load affects both alike, but only roughly.
Results go to stdout and ``bench_out/bench_precision.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from augkit.infer.engine import to_model_input  # noqa: E402
from augkit.io.images import write_image  # noqa: E402
from augkit.io.preprocess import eval_image  # noqa: E402
from augkit.models.checkpoint import load_model  # noqa: E402
from augkit.training.config import TrainConfig  # noqa: E402
from augkit.training.loop import train  # noqa: E402
from augkit.training.precision import BF16_MIN_SIZE, cpu_has_native_bf16  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def digit_picture(d8: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 digit (0..16) as a size x size RGB uint8 picture (bilinear upscale, like the tests)."""
    g = cv2.resize((d8 * (255 / 16)).astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
    return np.repeat(g[:, :, None], 3, axis=2)


def make_data(root: Path, digits: list[int], per_class: int, test_per_class: int | None, size: int):
    """Training folder (``per_class`` of each digit, PNG) and the held-out test set (the next ones)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    test_x, test_y = [], []
    for label, k in enumerate(digits):
        imgs = d.images[d.target == k]
        if len(imgs) <= per_class:
            sys.exit(f"digit {k} has {len(imgs)} images: --per-class {per_class} leaves none to test on")
        for i, img in enumerate(imgs[:per_class]):
            path = root / f"d{k}" / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_image(digit_picture(img, size), path)
        rest = imgs[per_class:] if test_per_class is None else imgs[per_class : per_class + test_per_class]
        test_x += [eval_image(digit_picture(img, size), size) for img in rest]
        test_y += [label] * len(rest)
    return torch.from_numpy(np.stack(test_x)), np.array(test_y)


def held_out_accuracy(run: Path, x: torch.Tensor, y: np.ndarray, batch: int = 64) -> float:
    model, meta = load_model(run / "best.pt")
    preds = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            preds.append(model(to_model_input(x[i : i + batch], meta, torch.device("cpu"))).argmax(1).numpy())
    return float((np.concatenate(preds) == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=112, help=f"image size (auto picks bf16 from {BF16_MIN_SIZE} px)")
    ap.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--per-class", type=int, default=60, help="training + validation images per digit")
    ap.add_argument("--test-per-class", type=int, default=None, help="held-out test digits per class (all)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: augkit's)")
    ap.add_argument("--out", default="bench_out/bench_precision.json")
    args = ap.parse_args()
    digits = [int(v) for v in args.digits.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    cpu = {"processor": platform.processor() or platform.machine(), "native_bf16": cpu_has_native_bf16()}
    print(f"CPU: {cpu} cores={os.cpu_count()} torch={torch.__version__}", flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        x, y = make_data(root / "data", digits, args.per_class, args.test_per_class, args.size)
        print(f"{len(digits)} digits, {args.per_class}/class to train+validate, {len(y)} held out, {args.size} px")
        for seed in seeds:
            for precision in PRECISIONS:
                out = root / f"{precision}-{seed}"
                cfg = TrainConfig(
                    data=root / "data",
                    out=out,
                    weights="none",
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    image_size=args.size,
                    recipe="none",
                    workers=0,
                    seed=seed,
                    device="cpu",
                    precision=precision,
                    val_split=0.25,
                    lr=args.lr,
                    threads=args.threads,
                )
                t0 = time.perf_counter()
                result = train(cfg)
                seconds = time.perf_counter() - t0
                row = {
                    "seed": seed,
                    "precision": precision,
                    "held_out_acc": held_out_accuracy(out, x, y),
                    "val_acc": result.best["val_acc"],
                    "best_epoch": result.best_epoch,
                    "seconds": round(seconds, 1),
                    "train_images_per_s": statistics.median(h["images_per_s"] for h in result.history),
                }
                runs.append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for p in PRECISIONS:
        mine = [r for r in runs if r["precision"] == p]
        summary[p] = {
            "mean_held_out_acc": statistics.mean(r["held_out_acc"] for r in mine),
            "mean_seconds": statistics.mean(r["seconds"] for r in mine),
            "mean_train_images_per_s": statistics.mean(r["train_images_per_s"] for r in mine),
        }
    acc = {(r["seed"], r["precision"]): r["held_out_acc"] for r in runs}
    summary["gap_bf16_minus_fp32"] = {s: round(acc[s, "bf16"] - acc[s, "fp32"], 4) for s in seeds}
    summary["speedup_bf16"] = round(summary["fp32"]["mean_seconds"] / summary["bf16"]["mean_seconds"], 2)
    print(json.dumps(summary, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "cpu": cpu, "runs": runs, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
