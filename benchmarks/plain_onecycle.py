"""A plain training script, written the way a careful user writes one (no augkit): torchvision's
ResNet-18, albumentations, AdamW and a per-step one-cycle schedule (warm-up to 3e-3, then cosine
annealing; torch's OneCycleLR with its defaults). The contender ``benchmarks/bench_defaults.py``
measures augkit's defaults against; not tuned against them (max_lr 3e-3 and batch 32 are the
usual starting points, the augmentations mirror augkit's recipes by hand).

Usage: python benchmarks/plain_onecycle.py TRAIN_DIR TEST_DIR [--epochs 30] [--batch 32]
       [--max-lr 3e-3] [--aug digits|light|default|none] [--seed 0] [--size 32]
Prints one JSON line: {"test_acc": ..., "seconds": ...}. Folders are TRAIN_DIR/<class>/<image>.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def augmentations(name: str, seed: int) -> A.Compose:
    """By hand, the same kinds of change as augkit's ``digits``, ``light`` and ``default`` recipes."""
    steps = {
        "digits": [
            A.Affine(
                scale=(0.85, 1.15),
                translate_percent=(-0.08, 0.08),
                rotate=(-10, 10),
                shear=(-8, 8),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=0.9,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.12, contrast_limit=0.3, p=0.5),
            A.GaussianBlur(blur_limit=(3, 3), p=0.2),
        ],
        "light": [
            A.HorizontalFlip(p=0.5),
            A.Affine(translate_percent=(-0.05, 0.05), border_mode=cv2.BORDER_REFLECT_101, p=0.5),
            A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.0, p=0.5),
        ],
        "default": [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.06, 0.06),
                rotate=(-12, 12),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.7,
            ),
            A.OneOf(
                [
                    A.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.03, p=2 / 3),
                    A.RandomBrightnessContrast(brightness_limit=0.08, contrast_limit=0.2, p=1 / 3),
                ],
                p=0.8,
            ),
            A.GaussianBlur(blur_limit=(3, 5), p=0.1),
        ],
        "none": [],
    }[name]
    return A.Compose(steps, seed=seed)


def load(folder: Path, size: int, classes: list[str] | None = None) -> tuple[list[np.ndarray], torch.Tensor, list[str]]:
    classes = classes or sorted(p.name for p in folder.iterdir() if p.is_dir())
    images, labels = [], []
    for c, name in enumerate(classes):
        for f in sorted((folder / name).iterdir()):
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                continue
            images.append(cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_AREA))
            labels.append(c)
    return images, torch.tensor(labels), classes


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    x = (np.stack(images).astype(np.float32) / 255 - MEAN) / STD
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("train", type=Path)
    p.add_argument("test", type=Path)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-lr", type=float, default=3e-3)
    p.add_argument("--aug", choices=("digits", "light", "default", "none"), default="digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32)
    args = p.parse_args()

    t0 = time.perf_counter()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    x_train, y_train, classes = load(args.train, args.size)
    x_test, y_test, _ = load(args.test, args.size, classes)
    aug = augmentations(args.aug, args.seed)

    model = torchvision.models.resnet18(num_classes=len(classes))
    opt = torch.optim.AdamW(model.parameters(), lr=args.max_lr, weight_decay=1e-2)
    steps_per_epoch = (len(x_train) + args.batch - 1) // args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.max_lr, total_steps=args.epochs * steps_per_epoch)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(args.epochs):
        model.train()
        for idx in torch.randperm(len(x_train)).split(args.batch):
            if len(idx) < 2:  # BatchNorm needs two images; keep the schedule in step
                sched.step()
                continue
            xb = to_tensor([aug(image=x_train[i])["image"] for i in idx.tolist()])
            loss = loss_fn(model(xb), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(to_tensor(x_test[i : i + 256])).argmax(1) for i in range(0, len(x_test), 256)])
    acc = float((pred == y_test).float().mean())
    print(json.dumps({"test_acc": round(acc, 4), "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
