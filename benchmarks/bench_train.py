"""Online augmentation and training: quality and speed (a benchmark, never a test).

(1) quality: scikit-learn's digits (8x8, upscaled to 32 px) as DATA/train (few per class) and
    DATA/val (held-out digits); ResNet-18 from scratch, same seeds and budget, recipe ``digits``
    vs no augmentation; prints both validation accuracies per seed and their means.
(2) loader: AugmentedImageFolder with recipe ``default`` vs torchvision ImageFolder + the
    equivalent transforms.v2 pipeline; same photos, same workers, same batch size.
(3) training: ResNet-18 (``--arch``) steps fed by AugmentedImageFolder (recipe ``default``, DataLoader
    workers) vs the same steps fed pre-decoded tensors already in memory, alternating.

Run: .venv/bin/python benchmarks/bench_train.py [--parts quality,loader,train] [--device auto]
     [--json results.json]; ``--quick`` shrinks every budget (a smoke run).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from photos import make_photos  # noqa: E402
from rich.console import Console  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from augkit.dataset import AugmentedImageFolder  # noqa: E402
from augkit.freeze import set_phase  # noqa: E402
from augkit.models import build_model  # noqa: E402
from augkit.train import (TrainConfig, make_optimizer, model_input, opencv_threads, resolve_device,  # noqa: E402
                          train)


# ---------------------------------------------------------------------- (1) quality

def digits_split(root: Path, per_class: int, val_per_class: int, size: int = 32) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    for k in range(10):
        imgs = d.images[d.target == k]
        for i, img in enumerate(imgs[:per_class + val_per_class]):
            g = cv2.resize((img * (255 / 16)).astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
            part = "train" if i < per_class else "val"
            out = root / part / f"digit{k}" / f"{k}_{i:03d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(out), g)
    return root


def quality(work: Path, args) -> dict:
    data = digits_split(work / "digits", args.per_class, args.val_per_class)
    out = {}
    quiet = Console(file=io.StringIO())
    for name, recipe in (("digits recipe", "digits"), ("no augmentation", None)):
        runs = []
        for seed in range(args.seeds):
            cfg = TrainConfig(data=data, out=work / f"run-{recipe}-{seed}", recipe=recipe, weights="none",
                              epochs=args.epochs, batch_size=32, lr=2e-3, image_size=32, seed=seed,
                              workers=args.train_workers, device=args.device, progress=False)
            t0 = time.perf_counter()
            r = train(cfg, console=quiet)
            runs.append({"seed": seed, "best_val_acc": r.best["val_acc"], "last_val_acc": r.last["val_acc"],
                         "best_epoch": r.best_epoch, "seconds": round(time.perf_counter() - t0, 1)})
            print(f"  {name:16s} seed {seed}: val acc best {r.best['val_acc']:.1%} (epoch {r.best_epoch}), "
                  f"last {r.last['val_acc']:.1%}  [{runs[-1]['seconds']} s]", flush=True)
        out[name] = {"mean_best_val_acc": round(sum(x["best_val_acc"] for x in runs) / len(runs), 4),
                     "mean_last_val_acc": round(sum(x["last_val_acc"] for x in runs) / len(runs), 4), "runs": runs}
    return {"train_images": 10 * args.per_class, "val_images": 10 * args.val_per_class, "epochs": args.epochs,
            **out}


# ---------------------------------------------------------------------- (2) loader

def tv_pipeline(size: int):
    """torchvision.transforms.v2 equivalent of recipes/default.yaml + augkit's resize/crop policy."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.ToImage(),
        v2.Resize(size, antialias=True),
        v2.RandomHorizontalFlip(0.5),
        v2.RandomApply([v2.RandomAffine(degrees=12, translate=(0.06, 0.06), scale=(0.9, 1.1))], p=0.7),
        v2.RandomApply([v2.ColorJitter(0.25, 0.25, 0.25, 0.03)], p=0.8),
        v2.RandomApply([v2.GaussianBlur(5)], p=0.1),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])


def loader_rate(ds, workers: int, batch: int, epochs: int) -> float:
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers)
    n = 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        for x, _ in loader:
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def loader(work: Path, args) -> dict:
    from torchvision.datasets import ImageFolder

    photos = make_photos(work / "photos", count=args.photos)
    ours = AugmentedImageFolder(photos, "default", image_size=args.size)
    tv = ImageFolder(photos, transform=tv_pipeline(args.size))
    assert ours.samples == tv.samples
    with opencv_threads(1):  # augkit train does the same before its workers start
        rate_ours = loader_rate(ours, args.workers, 32, args.loader_epochs)
    rate_tv = loader_rate(tv, args.workers, 32, args.loader_epochs)
    print(f"  augkit {rate_ours:.0f} img/s, torchvision {rate_tv:.0f} img/s: {rate_ours / rate_tv:.2f}x", flush=True)
    return {"images": len(ours), "size": args.size, "workers": args.workers, "augkit_img_s": round(rate_ours, 1),
            "torchvision_img_s": round(rate_tv, 1), "ratio": round(rate_ours / rate_tv, 3)}


# ---------------------------------------------------------------------- (3) training throughput

def steps_rate(batches, model, opt, device, steps: int, warmup: int) -> float:
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    n, t0 = 0, time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            n, t0 = 0, time.perf_counter()
        x, y = next(batches)
        x, y = model_input(x, device), y.to(device, non_blocking=True)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += y.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def endless(loader, ds):
    epoch = 0
    while True:
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        yield from loader
        epoch += 1


def training(work: Path, args) -> dict:
    """The same model and optimizer, fed alternately (``--rounds`` times) by the recipe pipeline
    and by pre-decoded tensors; the best round of each counts (robust to other load on the machine)."""
    device = resolve_device(args.device)
    photos = work / "photos"
    if not photos.exists():
        make_photos(photos, count=args.photos)
    size, batch = args.train_size, args.batch
    # as augkit train does: uint8 from the workers, normalized on the device (both sides alike)
    ds = AugmentedImageFolder(photos, "default", image_size=size, output="uint8")
    plain = AugmentedImageFolder(photos, None, image_size=size, output="uint8")
    x = torch.stack([plain[i][0] for i in range(len(plain))])
    y = torch.tensor(plain.targets)
    pin = device.type == "cuda"
    torch.manual_seed(0)
    model = build_model(args.arch, len(ds.classes)).to(device)
    set_phase(model, "all")
    opt = make_optimizer(model, TrainConfig(data=".", out="x"))
    rates: dict[str, list[float]] = {"pre-decoded": [], "recipe": []}
    with opencv_threads(1):
        aug_loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=args.train_workers, pin_memory=pin,
                                persistent_workers=args.train_workers > 0, drop_last=True)
        mem_loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, pin_memory=pin, drop_last=True)
        sources = {"pre-decoded": endless(mem_loader, None), "recipe": endless(aug_loader, ds)}
        for r in range(args.rounds):
            for name, batches in sources.items():
                rates[name].append(steps_rate(batches, model, opt, device, args.steps, args.warmup))
            print(f"  round {r + 1}: pre-decoded {rates['pre-decoded'][-1]:.1f} img/s, recipe "
                  f"{rates['recipe'][-1]:.1f} img/s", flush=True)
    best = {k: max(v) for k, v in rates.items()}
    return {"device": str(device), "arch": args.arch, "size": size, "batch": batch, "workers": args.train_workers,
            "steps": args.steps,
            "rounds": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
            **{f"{k}_img_s": round(v, 1) for k, v in best.items()},
            "ratio": round(best["recipe"] / best["pre-decoded"], 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="quality,loader,train")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--per-class", type=int, default=10, help="training digits per class")
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--train-workers", type=int, help="workers for (1) and (3) [default: --workers]")
    p.add_argument("--seeds", type=int, default=2, help="quality: runs per variant (seeds 0..n-1)")
    p.add_argument("--photos", type=int, default=192)
    p.add_argument("--size", type=int, default=224, help="loader benchmark output size")
    p.add_argument("--loader-epochs", type=int, default=2)
    p.add_argument("--train-size", type=int, default=128, help="training benchmark image size")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--arch", default="resnet18", help="training benchmark model")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="training: alternations of the two feeds")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run")
    args = p.parse_args()
    args.train_workers = args.workers if args.train_workers is None else args.train_workers
    if args.quick:
        args.per_class, args.val_per_class, args.epochs, args.photos, args.seeds = 5, 5, 2, 48, 1
        args.loader_epochs, args.steps, args.warmup, args.rounds = 1, 2, 1, 1
    results = {"torch": torch.__version__, "cpus": os.cpu_count(), "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for part, fn in (("quality", quality), ("loader", loader), ("train", training)):
            if part in args.parts.split(","):
                print(f"[{part}]", flush=True)
                t0 = time.perf_counter()
                results[part] = fn(work, args)
                results[part]["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
