"""Which layers to train when transferring a backbone to a small labelled set: the evidence behind
``--freeze auto`` (an accuracy experiment, not a timing benchmark).

Task (scikit-learn's handwritten digits, 8x8 upscaled to 32 px; data that ships with the package):

1. pretrain: ``augkit train`` a ResNet-18 from scratch on digits 0-4 (every image of them), recipe
   ``digits``, 10 epochs, lr 2e-3;
2. transfer: ``augkit train --weights <pretrain run>`` on digits 5-9 with N images per class
   (N = 5, 10, 30, 100; a seeded subset of each class's first 110 images), 20 epochs, batch 32,
   lr 1e-3, recipe ``digits``, once per freeze mode:
   ``head`` (new head on the frozen backbone), ``finetune`` (head alone for 20% of the epochs, then
   all layers at 0.1 x lr for the backbone: what ``auto`` does with many images), ``none`` (all
   layers from the first epoch, backbone at 0.1 x lr) and, with ``--modes ...,scratch``, ``scratch``
   (``--weights none``) for reference;
3. score ``last.pt`` on the same held-out images for every run (the last 60 images of each of
   digits 5-9: 300 images never used for training), with ``augkit evaluate --tta identity``.

Seeds: each (N, seed) uses the same subset and seed for every mode (paired comparison).
Run: .venv/bin/python benchmarks/bench_transfer.py [--sizes 5,10,30,100] [--seeds 0,1]
     [--modes head,finetune,none,scratch] [--epochs 20] [--backbone-lr-mult 0.1] [--json out.json]
(~25 minutes on this project's shared 2-core box; seeds run outermost, results are saved after each run.)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
#: one torch thread: on a shared machine two threads ran ResNet-18 at 32 px at ~4 img/s (OpenMP
#: threads waiting on each other while other jobs hold the cores); accuracy does not depend on it
THREADS = 1
TEST_PER_CLASS = 60
POOL_PER_CLASS = 110  # training subsets are drawn from each class's first 110 images


def load() -> tuple:
    import cv2
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = [cv2.resize((im * (255 / 16)).astype(np.uint8), (32, 32), interpolation=cv2.INTER_LINEAR) for im in d.images]
    return imgs, d.target


def write(root: Path, items: list[tuple[int, int]], imgs) -> Path:
    """root/digit<k>/<index>.png for each (dataset index, label)."""
    import cv2

    for i, k in items:
        out = root / f"digit{k}" / f"{i:04d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(out), imgs[i])
    return root


def by_class(target, digits) -> dict[int, list[int]]:
    return {k: [i for i, t in enumerate(target) if t == k] for k in digits}


def train(data: Path, out: Path, *, weights: str, freeze: str, epochs: int, seed: int, lr: float) -> float:
    from augkit.training.config import TrainConfig
    from augkit.training.loop import train as run_train

    t0 = time.perf_counter()
    run_train(
        TrainConfig(
            data=data,
            out=out,
            recipe="digits",
            weights=weights,
            freeze=freeze,
            epochs=epochs,
            batch_size=32,
            lr=lr,
            image_size=32,
            val_split=0,
            seed=seed,
            device="cpu",
            workers=0,
            threads=THREADS,
            progress=False,
        )
    )
    return time.perf_counter() - t0


def test_accuracy(run: Path, test: Path) -> float:
    from augkit.infer.evaluate import evaluate

    return evaluate(run / "last.pt", test, tta="identity", device="cpu", workers=0)["accuracy"]["plain"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="5,10,30,100")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--modes", default="head,finetune,none")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--backbone-lr-mult",
        type=float,
        help="override augkit.training.freeze.BACKBONE_LR_MULT (0.1): the "
        "pretrained backbone's share of the learning rate once it trains",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.backbone_lr_mult is not None:
        import augkit.training.freeze

        augkit.training.freeze.BACKBONE_LR_MULT = args.backbone_lr_mult  # read by choose_freeze at each run's start
    import augkit.infer.evaluate  # noqa: F401  (imported up front: the code measured is the code at the start)
    import augkit.training.loop  # noqa: F401

    imgs, target = load()
    src, dst = by_class(target, range(5)), by_class(target, range(5, 10))
    results: dict = {"load_before": os.getloadavg(), "runs": [], "backbone_lr_mult": args.backbone_lr_mult}
    with tempfile.TemporaryDirectory(prefix="bench_transfer_") as tmp:
        work = Path(tmp)
        pre = write(work / "pretrain", [(i, k) for k, idx in src.items() for i in idx], imgs)
        test = write(work / "test", [(i, k) for k, idx in dst.items() for i in idx[-TEST_PER_CLASS:]], imgs)
        if set(args.modes.split(",")) != {"scratch"}:  # scratch alone needs no pretrained backbone
            secs = train(
                pre, work / "pre_run", weights="none", freeze="none", epochs=args.pretrain_epochs, seed=0, lr=2e-3
            )
            results["pretrain"] = {"images": sum(len(v) for v in src.values()), "seconds": round(secs, 1)}
            print(f"pretrained on digits 0-4 in {secs:.0f} s", flush=True)
        for seed in map(int, args.seeds.split(",")):  # seed outermost: a cut-short run still has whole seeds
            for n in map(int, args.sizes.split(",")):
                pick = [
                    (i, k)
                    for k, idx in dst.items()
                    for i in random.Random(f"{seed}-{k}").sample(idx[:POOL_PER_CLASS], n)
                ]
                data = write(work / f"n{n}_s{seed}", pick, imgs)
                for mode in args.modes.split(","):
                    run = work / f"run_n{n}_s{seed}_{mode}"
                    weights = "none" if mode == "scratch" else str(work / "pre_run")
                    secs = train(
                        data,
                        run,
                        weights=weights,
                        freeze="none" if mode == "scratch" else mode,
                        epochs=args.epochs,
                        seed=seed,
                        lr=args.lr,
                    )
                    acc = test_accuracy(run, test)
                    results["runs"].append(
                        {
                            "per_class": n,
                            "seed": seed,
                            "mode": mode,
                            "test_acc": round(acc, 4),
                            "seconds": round(secs, 1),
                            "load": os.getloadavg()[0],
                        }
                    )
                    print(f"  N={n:3d}/class seed {seed} {mode:8s} test acc {acc:.1%} ({secs:.0f} s)", flush=True)
                    if args.json:
                        args.json.write_text(json.dumps(results, indent=2))
    results["load_after"] = os.getloadavg()
    print_table(results["runs"], args.modes.split(","))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def print_table(runs: list[dict], modes: list[str]) -> None:
    """Markdown: one row per data size, one column per mode (per-seed accuracies, then the mean)."""
    sizes = sorted({r["per_class"] for r in runs})
    print("| images per class | " + " | ".join(modes) + " |")
    print("| --- |" + " --- |" * len(modes))
    for n in sizes:
        cells = []
        for m in modes:
            accs = [r["test_acc"] for r in runs if r["per_class"] == n and r["mode"] == m]
            mean = sum(accs) / max(1, len(accs))
            cells.append(" / ".join(f"{a:.1%}" for a in accs) + f", **{mean:.1%}**")
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
