"""The colour ops' albumentations transforms, run as few passes over uint8 pixels as the draws allow.

``color`` builds :class:`ColorJitter` and ``linear`` builds :class:`RandomBrightnessContrast`: subclasses
of albumentations 2.0.8's transforms of the same names that override only ``apply``. What is drawn
(``get_params``, the same calls on the same generators), the manifest entries (the class names are
kept on purpose: augkit's manifest records ``type(transform).__name__``) and the serialized form's
arguments stay albumentations'; the pixels equal albumentations' own, and tests/test_colour.py
checks both on real photos across seeds and parameter extremes.

What changes is how uint8 pixels are touched (measured in benchmarks/bench_colour.py):

- brightness, contrast and ``a * x + b`` are 256-entry tables, computed with albucore's arithmetic
  (float32 table, clip, truncate), so the table equals the one albumentations builds. A table is
  applied when the next step needs the pixels; contrast followed by brightness (in ColorJitter's
  random order) is one composed table, one pass. Tables after the first are applied in place, on a
  buffer this transform owns, never on the caller's image.
- contrast's grey mean is an exact integer sum (``cv2.sumElems``) divided by the pixel count, which is
  the value numpy's ``mean`` gives, at a fraction of its cost.
- saturation is one blend with the grey image (``cv2.addWeighted`` on uint8, written into the grey
  buffer); hue is the same OpenCV HSV round trip (uint8 HSV quantisation decides the pixels), with the
  hue table applied to the H channel alone and nothing done when the drawn hue shift is 0.

No float32 copy of the image is made on uint8 images; float32 images take albumentations' own path.
Serialized (``recipes export --to albumentations``), both are written as albumentations' own
classes: the exported file loads without augkit and gives the same pixels (tested in a fresh process).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from albucore import sz_lut  # type: ignore[import-untyped]

from augkit.albu import import_albumentations

A = import_albumentations()
_ColorJitter: Any = A.ColorJitter  # classes bound at run time: typed Any for the subclasses below
_RandomBrightnessContrast: Any = A.RandomBrightnessContrast

_RAMP = np.arange(256, dtype=np.float32)
_RAMP.setflags(write=False)
_IDENTITY = np.arange(256, dtype=np.uint8)
_IDENTITY.setflags(write=False)


# ====================================================================== tables (albucore's arithmetic)


def _to_table(values: np.ndarray) -> np.ndarray:
    """albucore's ``clip``: clamp to [0, 255], then truncate to uint8."""
    return np.clip(values, 0, 255).astype(np.uint8)


def brightness_table(factor: float) -> np.ndarray:
    """``adjust_brightness_torchvision`` as a table: albucore's ``multiply`` casts the factor to float32."""
    return _to_table(_RAMP * np.float32(factor))


def multiply_add_table(factor: float, value: float) -> np.ndarray:
    """albucore's ``multiply_add`` on uint8 as a table: ``ramp * factor + value`` in float32 (two roundings)."""
    return _to_table(_RAMP * float(factor) + float(value))


def contrast_table(factor: float, mean: float) -> np.ndarray:
    """``adjust_contrast_torchvision`` as a table, given the grey mean of the image it applies to."""
    if factor == 0:
        return np.full(256, int(mean + 0.5), np.uint8)
    return multiply_add_table(factor, np.float64(mean) * (1 - factor))


def hue_table(factor: float) -> np.ndarray:
    """The H-channel table of albumentations' uint8 hue shift (H in [0, 180), OpenCV's uint8 HSV)."""
    return np.mod(np.arange(0, 256, dtype=np.int16) + 180 * factor, 180).astype(np.uint8)


def grey_mean(img: np.ndarray) -> np.float64:
    """The mean of the image's grey (``cv2.COLOR_RGB2GRAY``; a 1-channel image is its own grey), as
    numpy's ``mean`` computes it: the exact integer sum divided by the pixel count."""
    grey = img if is_grey(img) else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return np.float64(cv2.sumElems(grey)[0]) / np.float64(grey.shape[0] * grey.shape[1])


def is_grey(img: np.ndarray) -> bool:
    return img.ndim == 2 or img.shape[-1] == 1


# ====================================================================== one image, one owner


class _Pixels:
    """The image being changed, a pending table, and whether the buffer is ours to write into.

    A table waits in ``lut`` until a step needs the pixels; tables meeting there compose
    (``second[first]``: exactly the two truncating passes, in one). The caller's image is read,
    never written."""

    def __init__(self, img: np.ndarray):
        self.img = img
        self.owned = False
        self.lut: np.ndarray | None = None

    def then(self, table: np.ndarray) -> None:
        self.lut = table if self.lut is None else table[self.lut]

    def flush(self) -> np.ndarray:
        if self.lut is not None:
            # stringzilla's byte translation: faster here than cv2.LUT; a copy first if the buffer is the caller's
            self.img = sz_lut(self.img, self.lut, inplace=self.owned)
            self.owned, self.lut = True, None
        return self.img

    def replace(self, img: np.ndarray) -> None:
        self.img, self.owned = img, True


def _saturation(px: _Pixels, factor: float) -> None:
    """``adjust_saturation_torchvision``: a blend with the grey image, written into the grey buffer."""
    img = px.flush()
    grey3 = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    if factor != 0:
        cv2.addWeighted(img, factor, grey3, 1 - factor, 0, dst=grey3)
    px.replace(grey3)


def _hue(px: _Pixels, factor: float) -> None:
    """``adjust_hue_torchvision`` on uint8: RGB -> HSV, the H table, HSV -> RGB in the same buffer."""
    hsv = cv2.cvtColor(px.flush(), cv2.COLOR_RGB2HSV)
    h = cv2.extractChannel(hsv, 0)
    sz_lut(h, hue_table(factor), inplace=True)
    cv2.insertChannel(h, hsv, 0)
    px.replace(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=hsv))


def color_jitter(
    img: np.ndarray, brightness: float, contrast: float, saturation: float, hue: float, order: list[int]
) -> np.ndarray:
    """albumentations' ``ColorJitter.apply`` on a uint8 image (1 or 3 channels), in as few passes as the
    order allows. Returns ``img`` itself when nothing changes it (as albumentations does)."""
    px = _Pixels(img)
    grey = is_grey(img)
    for i in order:
        if i == 0 and brightness != 1:
            px.then(brightness_table(brightness))
        elif i == 1 and contrast != 1:
            px.then(contrast_table(contrast, grey_mean(px.flush())))  # the mean of the pixels as they are now
        elif i == 2 and saturation != 1 and not grey:
            _saturation(px, saturation)
        elif i == 3 and hue != 0 and not grey:
            _hue(px, hue)
    return px.flush()


# ====================================================================== the transforms


def _as_albumentations(state: dict, base: Any) -> dict:
    """A serialized transform under albumentations' own class name (the arguments are the same)."""
    return {**state, "__class_fullname__": base.get_class_fullname()}


class ColorJitter(_ColorJitter):
    """albumentations' ColorJitter (same draws, same arguments) whose uint8 pixels go through
    :func:`color_jitter`. Named as albumentations' class so that manifests name the same transform."""

    def to_dict_private(self) -> dict[str, Any]:
        return _as_albumentations(super().to_dict_private(), _ColorJitter)

    def apply(
        self,
        img: np.ndarray,
        brightness: float,
        contrast: float,
        saturation: float,
        hue: float,
        order: list[int],
        **params: Any,
    ) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (1, 3)):
            # float32 images, and the error albumentations raises for other channel counts
            return super().apply(img, brightness, contrast, saturation, hue, order, **params)
        return color_jitter(img, brightness, contrast, saturation, hue, order)


class RandomBrightnessContrast(_RandomBrightnessContrast):
    """albumentations' RandomBrightnessContrast (same draws, same arguments): on uint8, ``img * alpha +
    beta`` as one table built with albucore's arithmetic, applied in one pass."""

    def to_dict_private(self) -> dict[str, Any]:
        return _as_albumentations(super().to_dict_private(), _RandomBrightnessContrast)

    def apply(self, img: np.ndarray, alpha: float, beta: float, **params: Any) -> np.ndarray:
        if img.dtype != np.uint8:
            return super().apply(img, alpha, beta, **params)
        return sz_lut(img, multiply_add_table(alpha, beta), inplace=False)
