"""The ops of augkit's augmentation policies (``trivial_augment``, ``rand_augment``): tables, kernels, draws.

The op lists and magnitude ranges are torchvision's (``TrivialAugmentWide`` and ``RandAugment``
with 31 magnitude bins), and each op is a numpy/OpenCV kernel that follows torchvision's tensor
code on uint8 images (nearest-neighbour warps, shears about the top-left corner, float32 blends
truncated to uint8), so a policy means what the papers and timm/torchvision users expect; a test
compares the tables and the pixels with torchvision's. The kernels need no torch, so policies run
in ``augment`` workers too. Random draws come from the pipeline's generator (the albumentations
transform in :mod:`augkit.recipe.policies.transform`), and each applied op and magnitude goes to the manifest.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

NUM_BINS = 31
POLICIES = ("trivial_augment", "rand_augment")
#: The op names, in torchvision's order (the same for both policies).
OP_NAMES = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
#: Largest magnitude of each op with a linear range: (TrivialAugmentWide, RandAugment). Translations
#: are pixels for TrivialAugmentWide and a fraction of the side (x 150/331) for RandAugment.
_MAX = {
    "ShearX": (0.99, 0.3),
    "ShearY": (0.99, 0.3),
    "TranslateX": (32.0, 150.0 / 331.0),
    "TranslateY": (32.0, 150.0 / 331.0),
    "Rotate": (135.0, 30.0),
    "Brightness": (0.99, 0.9),
    "Color": (0.99, 0.9),
    "Contrast": (0.99, 0.9),
    "Sharpness": (0.99, 0.9),
}
_POSTERIZE_SPAN = {"trivial_augment": 6, "rand_augment": 4}


@functools.lru_cache(maxsize=64)
def augmentation_space(
    policy: str, height: int, width: int, bins: int = NUM_BINS
) -> dict[str, tuple[np.ndarray | None, bool]]:
    """op name -> (its magnitudes per bin, or None; whether a draw flips its sign), as torchvision's.

    Cached per image size (drawn for every image); callers must not modify the arrays."""
    which = POLICIES.index(policy)
    space: dict[str, tuple[np.ndarray | None, bool]] = {"Identity": (None, False)}
    for name, maxes in _MAX.items():
        top = maxes[which]
        if policy == "rand_augment" and name == "TranslateX":
            top *= width
        elif policy == "rand_augment" and name == "TranslateY":
            top *= height
        space[name] = (np.linspace(0.0, top, bins, dtype=np.float32), True)
    span = (bins - 1) / _POSTERIZE_SPAN[policy]
    space["Posterize"] = ((8 - np.round(np.arange(bins) / span)).astype(np.int64), False)
    space["Solarize"] = (np.linspace(255.0, 0.0, bins, dtype=np.float32), False)
    space["AutoContrast"] = (None, False)
    space["Equalize"] = (None, False)
    for values, _ in space.values():
        if values is not None:
            values.setflags(write=False)  # shared through the cache
    return space


# ====================================================================== kernels (uint8 RGB, HWC)


def _fill3(fill: Any) -> tuple[float, float, float]:
    return tuple(float(v) for v in fill) if isinstance(fill, (list, tuple)) else (float(fill),) * 3


def _warp(img: np.ndarray, inverse: np.ndarray, border: int, fill: Any) -> np.ndarray:
    """Nearest-neighbour warp with a matrix mapping output pixel indices to input ones."""
    import cv2  # OpenCV loads when an image is transformed, not when the op table is read

    h, w = img.shape[:2]
    return cv2.warpAffine(
        img,
        inverse.astype(np.float64),
        (w, h),
        flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
        borderMode=border,
        borderValue=_fill3(fill),
    )


def _blend(img: np.ndarray, other: np.ndarray | float, ratio: float) -> np.ndarray:
    """torchvision's _blend on uint8: float32 mix, clamp, truncate."""
    out = np.float32(ratio) * img.astype(np.float32) + np.float32(1.0 - ratio) * np.asarray(other, np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def _gray(img: np.ndarray) -> np.ndarray:
    f = img.astype(np.float32)
    g = np.float32(0.2989) * f[..., 0] + np.float32(0.587) * f[..., 1] + np.float32(0.114) * f[..., 2]
    return g.astype(np.uint8)[..., None]


def _sharpness(img: np.ndarray, factor: float) -> np.ndarray:
    import cv2  # see _warp

    if img.shape[0] <= 2 or img.shape[1] <= 2:
        return img
    kernel = np.ones((3, 3), np.float32)
    kernel[1, 1] = 5.0
    kernel /= kernel.sum()
    blurred = cv2.filter2D(img.astype(np.float32), -1, kernel, borderType=cv2.BORDER_CONSTANT)
    degenerate = img.copy()
    degenerate[1:-1, 1:-1] = np.round(blurred[1:-1, 1:-1]).clip(0, 255).astype(np.uint8)
    return _blend(img, degenerate, factor)


def _autocontrast(img: np.ndarray) -> np.ndarray:
    lo = img.min(axis=(0, 1), keepdims=True).astype(np.float32)
    hi = img.max(axis=(0, 1), keepdims=True).astype(np.float32)
    flat = hi == lo
    scale = np.where(flat, 1.0, 255.0 / np.where(flat, 1.0, hi - lo)).astype(np.float32)
    lo = np.where(flat, 0.0, lo).astype(np.float32)
    return np.clip((img.astype(np.float32) - lo) * scale, 0, 255).astype(np.uint8)


def _equalize(img: np.ndarray) -> np.ndarray:
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        chan = img[..., c]
        hist = np.bincount(chan.ravel(), minlength=256)
        nonzero = hist[hist != 0]
        step = int(nonzero[:-1].sum()) // 255
        if step == 0:
            out[..., c] = chan
            continue
        lut = (np.cumsum(hist) + step // 2) // step
        lut = np.concatenate([[0], lut[:-1]]).clip(0, 255).astype(np.uint8)
        out[..., c] = lut[chan]
    return out


def apply_op(img: np.ndarray, name: str, magnitude: float, border: int = 0, fill: Any = 0) -> np.ndarray:
    """One policy op on an RGB uint8 image, as torchvision's ``_apply_op`` does it on a uint8 tensor."""
    m = float(magnitude)
    if name in ("ShearX", "ShearY"):  # shear about the top-left corner of the top-left pixel
        inv = (
            np.array([[1.0, m, 0.5 * m], [0.0, 1.0, 0.0]])
            if name == "ShearX"
            else np.array([[1.0, 0.0, 0.0], [m, 1.0, 0.5 * m]])
        )
        return _warp(img, inv, border, fill)
    if name in ("TranslateX", "TranslateY"):
        t = int(m)
        return _warp(
            img,
            np.array(
                [[1.0, 0.0, -t if name == "TranslateX" else 0.0], [0.0, 1.0, -t if name == "TranslateY" else 0.0]]
            ),
            border,
            fill,
        )
    if name == "Rotate":  # counter-clockwise about the image centre
        h, w = img.shape[:2]
        a = math.radians(m)
        cx, cy = (w - 1) * 0.5, (h - 1) * 0.5
        c, s = math.cos(a), math.sin(a)
        inv = np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy]])
        return _warp(img, inv, border, fill)
    if name == "Brightness":
        return _blend(img, 0.0, 1.0 + m)
    if name == "Color":
        return _blend(img, _gray(img), 1.0 + m)
    if name == "Contrast":
        return _blend(img, _gray(img).astype(np.float32).mean(), 1.0 + m)
    if name == "Sharpness":
        return _sharpness(img, 1.0 + m)
    if name == "Posterize":
        return img & np.uint8((0xFF << (8 - int(m))) & 0xFF)
    if name == "Solarize":
        return np.where(img >= m, 255 - img, img).astype(np.uint8)
    if name == "AutoContrast":
        return _autocontrast(img)
    if name == "Equalize":
        return _equalize(img)
    if name == "Identity":
        return img
    raise ValueError(f"unknown policy op {name!r} (allowed: {', '.join(OP_NAMES)})")


# ====================================================================== drawing


def draw_ops(
    policy: str,
    num_ops: int,
    magnitude_bin: int | None,
    height: int,
    width: int,
    rng,
    only: tuple[str, ...] = (),
    sign: int = 0,
) -> list[dict]:
    """The ops and magnitudes of one image, drawn with ``rng`` (a ``random.Random``).

    TrivialAugment: one op, a uniform bin; RandAugment: ``num_ops`` ops, bin ``magnitude_bin``;
    signed ops flip sign with probability 1/2. ``only``/``sign`` pin the op and sign (previews).
    """
    space = augmentation_space(policy, height, width)
    names = list(only or space)
    out = []
    for _ in range(num_ops):
        name = names[rng.randrange(len(names))]
        values, signed = space[name]
        if values is None:
            out.append({"op": name, "magnitude": 0.0})
            continue
        b = rng.randrange(len(values)) if magnitude_bin is None else magnitude_bin
        value = values[b].item()
        if signed and (sign < 0 or (sign == 0 and rng.random() < 0.5)):
            value = -value
        out.append({"op": name, "magnitude": round(float(value), 6)})
    return out
