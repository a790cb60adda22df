"""A tiny, accurate digits classifier for the inference tests: a resnet18 with random (seeded)
convolutions whose head is fitted by logistic regression on their features (about a second)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from augkit.infer.engine import to_model_input
from augkit.io.images import DECODE_POLICY
from augkit.io.preprocess import IMAGENET_MEAN, IMAGENET_STD, RESIZE_POLICY
from augkit.models.archs import build_model
from augkit.models.checkpoint import ModelMeta, save_checkpoint

CLASSES = ["zero", "one", "two"]  # the model's order; not alphabetical, so folder order would be wrong
SIZE = 32


def digits3() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits 0, 1 and 2 and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = d.target < 3
    return d.images[keep], d.target[keep]


def digit_rgb(d8: np.ndarray, size: int = SIZE) -> np.ndarray:
    """An 8x8 sklearn digit (0..16) as a size x size RGB uint8 picture."""
    g = cv2.resize((d8 * (255 / 16)).astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
    return np.repeat(g[:, :, None], 3, axis=2)


def write_png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def make_run(run: Path, images: np.ndarray, target: np.ndarray, decode_policy: str = DECODE_POLICY) -> Path:
    """Save a resnet18 checkpoint: seeded random convolutions, head fitted on their features."""
    from sklearn.linear_model import LogisticRegression

    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES)).eval()
    meta = ModelMeta(
        arch="resnet18",
        classes=CLASSES,
        class_to_idx={c: i for i, c in enumerate(CLASSES)},
        image_size=SIZE,
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        decode_policy=decode_policy,
        resize_policy=RESIZE_POLICY,
    )
    x = to_model_input(torch.from_numpy(np.stack([digit_rgb(d) for d in images])), meta, torch.device("cpu"))
    head, model.fc = model.fc, torch.nn.Identity()
    with torch.no_grad():
        feats = model(x).numpy()
    clf = LogisticRegression(max_iter=2000).fit(feats, target)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(clf.coef_))
        head.bias.copy_(torch.from_numpy(clf.intercept_))
    model.fc = head
    save_checkpoint(run / "best.pt", model, meta)
    return run
