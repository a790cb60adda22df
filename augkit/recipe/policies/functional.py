"""The ops of augkit's augmentation policies (``trivial_augment``, ``rand_augment``): tables, kernels, draws.

The reference is ``torchvision.transforms.v2`` (``TrivialAugmentWide`` and ``RandAugment`` with 31
magnitude bins, uint8 tensors, nearest interpolation): the op lists, the magnitude tables (torch's
float32 ``linspace``, reproduced bit for bit, so TrivialAugment's Translate bin 15 is 15 px, as
``int(15.999999)`` is in torchvision) and each kernel's arithmetic (float32 products, torch's fused
multiply-add in ``add_(alpha=...)``, truncation to uint8; Solarize compares in float32). How far each
op matches v2's pixels is stated in :data:`V2_MATCH` and asserted by tests/test_policies.py. The
kernels are numpy/OpenCV and need no torch, so policies run in ``augment`` workers too. Random draws come from the pipeline's generator (the albumentations
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
#: How each op compares with torchvision.transforms.v2 on uint8 RGB photos (nearest interpolation,
#: fill 0), as tests/test_policies.py asserts it; shown by ``augkit recipes ops``.
V2_MATCH = {
    "Identity": "pixel-equal",
    "ShearX": "pixel-equal except nearest-neighbour ties (rows that land on half pixels): RandAugment bins "
    "4, 12, 20, 28 up to 14% of pixels (bin 20, shear 0.2), TrivialAugment bins 8 and 24 under 1%",
    "ShearY": "as ShearX, by columns",
    "TranslateX": "pixel-equal",
    "TranslateY": "pixel-equal",
    "Rotate": "nearest-neighbour ties: up to 3% of pixels; +-90 degrees on an image whose width and height "
    "differ in parity (one odd, one even): up to 60% (every pixel lands on a half pixel, a tie that "
    "torch and OpenCV break differently)",
    "Brightness": "pixel-equal",
    "Color": "pixel-equal",
    "Contrast": "pixel-equal",
    "Sharpness": "pixel-equal",
    "Posterize": "pixel-equal",
    "Solarize": "pixel-equal",
    "AutoContrast": "pixel-equal",
    "Equalize": "pixel-equal",
}

#: One line for the op docs (``augkit recipes ops``).
V2_SUMMARY = (
    "Matches torchvision.transforms.v2 pixel for pixel except nearest-neighbour ties: Shear up to 14% of "
    "pixels at RandAugment bins 4/12/20/28 (under 1% at TrivialAugment bins 8/24), Rotate up to 3% "
    "(+-90 degrees on an odd x even image: up to 60%)."
)


def linspace32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` (float32, CPU) bit for bit: float32 step, the first half
    counted up from ``start`` and the second down from ``end``, each with one rounding (a fused
    multiply-add, as torch's kernel does it). numpy's own linspace rounds differently: 32 px x 15/30
    is 16.0 there, 15.999999 in torch, which torchvision's ``int()`` makes 15 px."""
    f32 = np.float32
    s, e = f32(start), f32(end)
    step = np.float64(f32((e - s) / f32(steps - 1)))
    i = np.arange(steps)
    up = (np.float64(s) + step * i).astype(f32)
    down = (np.float64(e) - step * (steps - 1 - i)).astype(f32)
    return np.where(i < steps // 2, up, down).astype(f32)


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
        space[name] = (linspace32(0.0, top, bins), True)
    span = (bins - 1) / _POSTERIZE_SPAN[policy]
    space["Posterize"] = ((8 - np.round(np.arange(bins) / span)).astype(np.int64), False)
    # v2: threshold = 255 x linspace(1, 0) (in float64; compared in float32 by the kernel)
    space["Solarize"] = (255.0 * linspace32(1.0, 0.0, bins).astype(np.float64), False)
    space["AutoContrast"] = (None, False)
    space["Equalize"] = (None, False)
    for values, _ in space.values():
        if values is not None:
            values.setflags(write=False)  # shared through the cache
    return space


# ====================================================================== kernels (uint8 RGB, HWC)


def _fill3(fill: Any) -> tuple[float, float, float]:
    if isinstance(fill, (list, tuple)):
        r, g, b = (float(v) for v in fill)
        return r, g, b
    return float(fill), float(fill), float(fill)


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


def _mul32(x: np.ndarray, factor: float) -> np.ndarray:
    """torch's ``x.mul(factor)`` on a uint8 or float32 tensor: float32, one rounding."""
    return x.astype(np.float32) * np.float32(factor)


def _fma32(x: np.ndarray, alpha: float, y: np.ndarray | float) -> np.ndarray:
    """torch's ``x.add_(y, alpha=alpha)`` in float32: ``x + alpha * y`` with one rounding (a fused
    multiply-add, as torch's vectorised kernel does it; float64 holds the exact product here)."""
    exact = np.float64(np.float32(alpha)) * np.asarray(y, np.float64)
    return (np.asarray(x, np.float64) + exact).astype(np.float32)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """clamp to [0, 255], then truncate, as torchvision v2 ends its float kernels."""
    return np.clip(x, 0, 255).astype(np.uint8)


#: every uint8 value once: an op that maps each value on its own, run on this, is its 256-entry table
_VALUES = np.arange(256, dtype=np.uint8)
_VALUES.setflags(write=False)


def _lut(img: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[img]`` in one uint8 pass, no float copy of the image. The table is the op's own arithmetic
    run on :data:`_VALUES`, so the pixels are the op's."""
    from albucore import sz_lut  # type: ignore[import-untyped]  # stringzilla: faster here than cv2.LUT

    return sz_lut(img, table, inplace=False)


def _blend(img: np.ndarray, other: np.ndarray | float, ratio: float) -> np.ndarray:
    """torchvision v2's ``_blend`` on uint8: ``img.mul(r).add_(other, alpha=1 - r)``, clamp, truncate."""
    return _to_uint8(_fma32(_mul32(img, ratio), 1.0 - float(ratio), other))


def _gray(img: np.ndarray) -> np.ndarray:
    """v2's grayscale of uint8 RGB (float32, floored), (H, W, 1)."""
    g = _mul32(img[..., 0], 0.2989)
    g = _fma32(g, 0.587, img[..., 1].astype(np.float32))
    g = _fma32(g, 0.114, img[..., 2].astype(np.float32))
    return np.floor(g)[..., None]


@functools.lru_cache(maxsize=128)
def _grey_blend_table(ratio: float) -> np.ndarray:
    """``_blend(value, grey, ratio)`` for every uint8 value (column) and integer grey (row): 256 x 256.
    Cached per ratio (a policy has 62); callers must not modify it."""
    values, greys = np.tile(_VALUES, 256), np.repeat(_VALUES.astype(np.float32), 256)
    table = _blend(values, greys, ratio).reshape(256, 256)
    table.setflags(write=False)
    return table


def _color(img: np.ndarray, ratio: float) -> np.ndarray:
    """v2's Color: each value blended with its pixel's floored grey. The blend of a (value, grey) pair is
    read from :func:`_grey_blend_table` (the same arithmetic) by a nearest-neighbour ``cv2.remap`` at
    integer coordinates: no float copy of the three channels (the grey plane is still computed in float)."""
    import cv2  # see _warp

    grey = _gray(img)[..., 0].astype(np.int16)  # floored: exact integers 0..254
    table = _grey_blend_table(float(ratio))
    return cv2.merge(
        [
            cv2.remap(table, cv2.merge([cv2.extractChannel(img, c).astype(np.int16), grey]), None, cv2.INTER_NEAREST)
            for c in range(img.shape[2])
        ]
    )


@functools.lru_cache(maxsize=128)
def _sharpness_table(factor: float) -> np.ndarray:
    """v2's ``x + (1 - factor) * (blur - x)`` (float32, one rounding, truncated) for every uint8 value x
    (column) and rounded blur (row): 256 x 256. Cached per factor; callers must not modify it."""
    x = np.tile(_VALUES, 256).astype(np.float32)
    blur = np.repeat(np.arange(256, dtype=np.float64), 256)
    table = _to_uint8(_fma32(x, 1.0 - float(factor), blur - x)).reshape(256, 256)
    table.setflags(write=False)
    return table


def _sharpness(img: np.ndarray, factor: float) -> np.ndarray:
    """v2: the 3x3 [1 1 1; 1 5 1; 1 1 1] / 13 blur rounded, then ``x + (1 - factor) * (blur - x)`` inside
    a 1-pixel frame. In integers: the sum ``t`` is a box sum plus 4 x the centre, and ``floor(t / 13 + 0.5)``
    is ``(2t + 13) // 26`` (t / 13 never ties); the blend is read from :func:`_sharpness_table` by a nearest
    ``cv2.remap`` at integer coordinates (as :func:`_color`). No float copy of the image."""
    import cv2  # see _warp

    if img.shape[0] <= 2 or img.shape[1] <= 2:
        return img
    box = cv2.boxFilter(img, cv2.CV_16U, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
    total = box[1:-1, 1:-1] + 4 * img[1:-1, 1:-1].astype(np.uint16)  # at most 13 x 255: fits
    blur = ((2 * total + 13) // 26).astype(np.int16)
    table = _sharpness_table(float(factor))
    inner = img[1:-1, 1:-1]
    out = img.copy()
    out[1:-1, 1:-1] = cv2.merge(
        [
            cv2.remap(
                table,
                cv2.merge([cv2.extractChannel(inner, c).astype(np.int16), cv2.extractChannel(blur, c)]),
                None,
                cv2.INTER_NEAREST,
            )
            for c in range(img.shape[2])
        ]
    )
    return out


def _autocontrast(img: np.ndarray) -> np.ndarray:
    """v2: per channel ``(x - min) / ((max - min) * (1/255))`` in float32; a flat channel is kept. Run on
    every value, that arithmetic is one table per channel, applied to the channel's plane."""
    import cv2  # see _warp
    from albucore import sz_lut  # see _lut

    planes = [cv2.extractChannel(img, c) for c in range(img.shape[2])]  # copies: translated in place below
    lo, hi = np.array([cv2.minMaxLoc(p)[:2] for p in planes], np.float32).T  # exact integers
    flat = hi == lo
    inv_scale = np.where(flat, np.float32(1.0), (hi - lo) * np.float32(1.0 / 255.0)).astype(np.float32)
    lo = np.where(flat, np.float32(0.0), lo).astype(np.float32)
    tables = _to_uint8((_VALUES[:, None].astype(np.float32) - lo) / inv_scale)  # (256, channels)
    return cv2.merge([sz_lut(p, np.ascontiguousarray(tables[:, c]), inplace=True) for c, p in enumerate(planes)])


def _equalize(img: np.ndarray) -> np.ndarray:
    """v2: per channel, a table from the channel's histogram (integers throughout), applied to its plane."""
    import cv2  # see _warp
    from albucore import sz_lut  # see _lut

    out = []
    for c in range(img.shape[2]):
        chan = cv2.extractChannel(img, c)  # a contiguous copy: counted fast, translated in place
        hist = np.bincount(chan.ravel(), minlength=256)
        nonzero = hist[hist != 0]
        step = int(nonzero[:-1].sum()) // 255
        if step == 0:
            out.append(chan)
            continue
        lut = (np.cumsum(hist) + step // 2) // step
        lut = np.concatenate([[0], lut[:-1]]).clip(0, 255).astype(np.uint8)
        out.append(sz_lut(chan, lut, inplace=True))
    return cv2.merge(out)


def apply_op(img: np.ndarray, name: str, magnitude: float, border: int = 0, fill: Any = 0) -> np.ndarray:
    """One policy op on an RGB uint8 image, as torchvision v2's policies do it on a uint8 tensor."""
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
    if name == "Brightness":  # per-value ops (Brightness, Contrast, Solarize, AutoContrast): tables
        return _lut(img, _to_uint8(_mul32(_VALUES, 1.0 + m)))
    if name == "Color":
        return _color(img, 1.0 + m)
    if name == "Contrast":  # the mean of the floored gray, exactly (a sum of integers), as float32
        mean = np.float32(_gray(img).sum(dtype=np.float64) / (img.shape[0] * img.shape[1]))
        return _lut(img, _blend(_VALUES, mean, 1.0 + m))  # type: ignore[arg-type]  # a float32 scalar broadcasts
    if name == "Sharpness":
        return _sharpness(img, 1.0 + m)
    if name == "Posterize":
        return img & np.uint8((0xFF << (8 - int(m))) & 0xFF)
    if name == "Solarize":
        return _lut(img, np.where(_VALUES >= np.float32(m), 255 - _VALUES, _VALUES).astype(np.uint8))  # float32 test
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
        if name in ("TranslateX", "TranslateY"):
            value = float(int(value))  # v2's int(): bin 15 of 32 px (15.999999) is 15 px, and the manifest says 15
        # 6 decimals, as the manifest keeps them, so the record reproduces the pixels
        out.append({"op": name, "magnitude": round(float(value), 6)})
    return out
