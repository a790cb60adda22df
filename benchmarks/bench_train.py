"""Training against plain scripts, side by side in one run (a benchmark, never a test).

(1) digits: ResNet-18 from scratch on 500 handwritten digits (scikit-learn's, 8x8 upscaled to
    32 px), 30 epochs, batch 64, the ``digits`` recipe. A plain PyTorch + albumentations script
    (the recipe exported to albumentations, augmenting in-process, AdamW with the same cosine
    schedule) against ``augkit train`` with its defaults; BOTH are timed as whole commands
    (``python ...`` subprocesses: start-up included). Test accuracy of both on held-out digits,
    and augkit's TTA ``shift`` accuracy through ``augkit evaluate``.
    Targets (issue 8): augkit <= 1.0x the plain script's time (aim 0.7x), accuracy >= plain's.
(2) jpeg: training input from 12-megapixel JPEGs (4032x3024, cut from scikit-image's photos) at
    224 px, the ``default`` recipe, 2 DataLoader workers, batch 32: torchvision ImageFolder with
    the classic RandomResizedCrop/flip/ColorJitter pipeline; a plain loop decoding with libjpeg's
    DCT scaling (cv2.IMREAD_REDUCED_COLOR_8), area resize and the same albumentations recipe;
    augkit's AugmentedImageFolder without and with its decoded cache (built beforehand; its
    build time is reported apart). Targets: augkit >= 2x ImageFolder and >= 0.8x the DCT loop.

The load average is printed before and after: ratios measured on a busy machine mean little.

Run: .venv/bin/python benchmarks/bench_train.py [--parts digits,jpeg] [--json out.json];
``--quick`` shrinks every budget (a smoke run, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------- data


def digits_split(root: Path, per_class: int, test_per_class: int, size: int = 32) -> Path:
    """root/train/digit<k>/*.png (``per_class`` each) and root/test/digit<k>/*.png (the next ones)."""
    import cv2
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    for k in range(10):
        for i, img in enumerate(d.images[d.target == k][: per_class + test_per_class]):
            g = cv2.resize((img * (255 / 16)).astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
            out = root / ("train" if i < per_class else "test") / f"digit{k}" / f"{k}_{i:03d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(out), g)
    return root


def camera_jpegs(root: Path, count: int, size: tuple[int, int] = (4032, 3024), classes: int = 2) -> Path:
    """``count`` phone-sized JPEGs (quality 90), each a different crop of a scikit-image photo, upscaled."""
    import cv2
    from photos import make_photos

    return make_photos(
        root,
        count,
        size,
        classes,
        crop=(0.7, 1.0),
        interpolation=cv2.INTER_CUBIC,
        sources=("astronaut", "chelsea", "coffee", "rocket"),
    )


# ---------------------------------------------------------------------- (1) the plain digits script


def plain_digits(train_dir: Path, test_dir: Path, epochs: int, batch: int, seed: int) -> dict:
    """What a user writes by hand: albumentations in-process, ResNet-18, AdamW + cosine schedule."""
    import cv2
    import numpy as np
    import torch
    import torchvision

    from augkit.recipe.api import load_recipe

    def load(folder: Path) -> tuple[list, torch.Tensor]:
        classes = sorted(p.name for p in folder.iterdir())
        files = [(f, c) for c, name in enumerate(classes) for f in sorted((folder / name).iterdir())]
        return [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f, _ in files], torch.tensor(
            [c for _, c in files]
        )

    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)

    def tensor(imgs: list) -> torch.Tensor:
        return torch.from_numpy(((np.stack(imgs).astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2).copy())

    torch.manual_seed(seed)
    x_train, y_train = load(train_dir)
    x_test, y_test = load(test_dir)
    aug = load_recipe("digits").to_albumentations()
    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_train)).split(batch):
            xb = tensor([aug(image=x_train[i])["image"] for i in idx.tolist()])
            loss = loss_fn(model(xb), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(tensor(x_test[i : i + 256])).argmax(1) for i in range(0, len(x_test), 256)])
    return {"test_acc": round(float((pred == y_test).float().mean()), 4)}


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    seconds = time.perf_counter() - t0
    if p.returncode not in (0, 3):
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return seconds, p


def digits(work: Path, args) -> dict:
    data = digits_split(work / "digits", args.per_class, args.test_per_class)
    py = sys.executable
    plain_s, p = timed(
        [py, __file__, "--plain-digits", str(data), "--epochs", str(args.epochs), "--batch", str(args.batch)]
    )
    plain = json.loads(p.stdout.strip().splitlines()[-1])
    run = work / "run"
    augkit_s, _ = timed(
        [
            py,
            "-m",
            "augkit",
            "train",
            str(data / "train"),
            "-o",
            str(run),
            "--recipe",
            "digits",
            "--weights",
            "none",
            "--epochs",
            str(args.epochs),
            "--batch-size",
            str(args.batch),
            "--image-size",
            "32",
            "--val-split",
            "0",
            "--device",
            "cpu",
        ]
    )
    report = work / "report.json"
    timed(
        [
            py,
            "-m",
            "augkit",
            "evaluate",
            str(run / "last.pt"),
            str(data / "test"),
            "--tta",
            "shift",
            "--report",
            str(report),
            "--device",
            "cpu",
        ]
    )
    acc = json.loads(report.read_text())["accuracy"]
    import yaml

    resolved = yaml.safe_load((run / "settings.yaml").read_text())["resolved"]
    out = {
        "train_images": 10 * args.per_class,
        "test_images": 10 * args.test_per_class,
        "epochs": args.epochs,
        "plain_s": round(plain_s, 1),
        "augkit_s": round(augkit_s, 1),
        "time_ratio": round(augkit_s / plain_s, 3),
        "plain_test_acc": plain["test_acc"],
        "augkit_test_acc": round(acc["plain"], 4),
        "augkit_tta_shift_acc": round(acc["tta"], 4),
        "augkit_cpu": resolved["cpu"],
        "augkit_precision": resolved["precision"]["name"],
    }
    print(
        f"  plain script {plain_s:.1f} s, acc {plain['test_acc']:.1%}; augkit train {augkit_s:.1f} s "
        f"({augkit_s / plain_s:.2f}x), acc {acc['plain']:.1%}, TTA shift {acc['tta']:.1%}",
        flush=True,
    )
    return out


# ---------------------------------------------------------------------- (2) JPEG input throughput


def classic_imagefolder(root: Path, size: int):
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    return ImageFolder(
        root,
        transform=T.Compose(
            [
                T.RandomResizedCrop(size),
                T.RandomHorizontalFlip(),
                T.ColorJitter(0.4, 0.4, 0.4),
                T.ToTensor(),
                T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        ),
    )


class DCTLoop:
    """A hand-written Dataset: libjpeg 1/8 decode, area resize, the albumentations recipe, crop."""

    def __init__(self, root: Path, size: int):
        from augkit.recipe.api import load_recipe

        self.files = sorted(root.rglob("*.jpg"))
        self.size, self.recipe, self.aug = size, load_recipe("default"), None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import cv2
        import numpy as np
        import torch

        if self.aug is None:
            self.aug = self.recipe.to_albumentations()
        img = cv2.imdecode(np.fromfile(self.files[i], np.uint8), cv2.IMREAD_REDUCED_COLOR_8)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        h, w = img.shape[:2]
        s = self.size / min(h, w)
        img = cv2.resize(
            img, (max(self.size, round(w * s)), max(self.size, round(h * s))), interpolation=cv2.INTER_AREA
        )
        img = self.aug(image=img)["image"]
        h, w = img.shape[:2]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        img = img[top : top + self.size, left : left + self.size].astype(np.float32) / 255
        img = (img - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)
        return torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32)), 0


def loader_rate(ds, workers: int, batch: int, epochs: int) -> float:
    from torch.utils.data import DataLoader

    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers)
    n, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        for x, _ in loader:
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def jpeg(work: Path, args) -> dict:
    from augkit.io.images import opencv_threads
    from augkit.training.dataset import AugmentedImageFolder

    photos = camera_jpegs(work / "jpegs", args.jpegs, tuple(args.jpeg_size))
    size, w, b, e = args.size, args.workers, 32, args.loader_epochs
    with opencv_threads(1):  # one OpenCV thread per worker, set before they fork (as augkit train does)
        rates = {
            "imagefolder": loader_rate(classic_imagefolder(photos, size), w, b, e),
            "dct_loop": loader_rate(DCTLoop(photos, size), w, b, e),
            "augkit": loader_rate(AugmentedImageFolder(photos, "default", image_size=size), w, b, e),
        }
        t0 = time.perf_counter()
        cached = AugmentedImageFolder(photos, "default", image_size=size, cache=work / "cache")
        build_s = time.perf_counter() - t0
        rates["augkit_cache"] = loader_rate(cached, w, b, e)
    out = {f"{k}_img_s": round(v, 1) for k, v in rates.items()}
    out.update(
        images=args.jpegs,
        jpeg_size=list(args.jpeg_size),
        size=size,
        workers=w,
        cache_build_s=round(build_s, 1),
        augkit_vs_imagefolder=round(rates["augkit"] / rates["imagefolder"], 2),
        augkit_vs_dct_loop=round(rates["augkit"] / rates["dct_loop"], 2),
        cache_vs_imagefolder=round(rates["augkit_cache"] / rates["imagefolder"], 2),
    )
    print(
        "  "
        + ", ".join(f"{k} {v:.1f} img/s" for k, v in rates.items())
        + f"; augkit/ImageFolder {out['augkit_vs_imagefolder']}x, augkit/DCT loop {out['augkit_vs_dct_loop']}x, "
        f"cache build {build_s:.1f} s",
        flush=True,
    )
    return out


# ---------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="digits,jpeg")
    p.add_argument("--per-class", type=int, default=50, help="digits: training images per class (500 in all)")
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--jpegs", type=int, default=40, help="jpeg: number of camera-sized JPEGs")
    p.add_argument("--jpeg-size", type=int, nargs=2, default=(4032, 3024))
    p.add_argument("--size", type=int, default=224, help="jpeg: training image size")
    p.add_argument("--workers", type=int, default=2, help="jpeg: DataLoader workers")
    p.add_argument("--loader-epochs", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the script works, measures nothing")
    p.add_argument("--plain-digits", type=Path, help=argparse.SUPPRESS)  # the plain script's own process
    args = p.parse_args()
    if args.quick:
        args.per_class, args.test_per_class, args.epochs, args.jpegs = 3, 2, 1, 4
        args.jpeg_size, args.size, args.loader_epochs = (806, 604), 64, 1
    return args


def main() -> None:
    args = parse_args()
    if args.plain_digits:
        print(
            json.dumps(
                plain_digits(args.plain_digits / "train", args.plain_digits / "test", args.epochs, args.batch, seed=0)
            )
        )
        return
    results: dict = {"cpus": os.cpu_count(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        for part, fn in (("digits", digits), ("jpeg", jpeg)):
            if part in args.parts.split(","):
                print(f"[{part}] load average {os.getloadavg()[0]:.2f}", flush=True)
                results[part] = fn(Path(tmp), args)
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
