"""Decode an image straight to a warp's output: read only what the warp can reach.

:class:`DecodedFile` is the :class:`~augkit.recipe.fuse.Source` training uses when no decoded image
is kept in memory: the recipe's parameters are drawn for the *working* image (the decoded picture
resized to shorter side ``size``, exactly as :func:`~augkit.io.preprocess.resize_short` would make
it, so every parameter and the manifest are what they are without fusion), and the first geometric
run is then drawn from the file in one ``cv2.warpAffine``:

* the matrix (output pixel -> working pixel) is conjugated with the scale from the working image to
  the decoded one (both cover the same picture, pixel centres at half-pixel offsets, as cv2.resize);
* the JPEG DCT scale (1/2, 1/4, 1/8) is chosen from the matrix *before* decoding: the largest ``k``
  with ``k <= s``, where ``s`` is the matrix's smallest singular value in full-size pixels per output
  pixel. The decoded picture then still has at least one pixel per output pixel in every direction
  (the output's resolution is kept) and the warp shrinks by less than 2x (bilinear sampling without
  area averaging aliases beyond that). Past 8x (a picture over 16x the output) the reachable region
  is first area-resized by a whole factor to bring the warp's scale under 2x;
* the region the warp can reach (the output's corners mapped back, plus 2 pixels for the
  interpolation) is cut out along every axis on which it lies inside the picture (on an axis where
  it crosses the edge the border mode needs the real edge, so that axis is kept whole); only that
  region is converted from the decoder's BGR order, after the warp, on the output's pixels.

The decode policy is the one :func:`~augkit.io.images.decode_image` applies (bounded read, header
limits before any pixel, truncation checks, EXIF orientation, errors naming the file). EXIF
orientation is known only after decoding: the working shape is first guessed from the stored
(unrotated) size; a picture the decoder turned by 90 degrees raises :class:`ShapeChanged`, and the
caller draws the parameters again for the turned shape (same seed, so the same draws; the decoded
pixels are kept). A nearly square picture whose two sides round to the same size at the chosen
DCT scale cannot be told apart: its working shape may then be the guessed one (a 1-pixel
difference in the size the parameters are drawn for).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from augkit.io.fileio import read_bytes
from augkit.io.images import DCT_MARGIN, decode_image, decode_jpeg_bgr, max_bytes_for, read_header
from augkit.io.jpeg import reduction
from augkit.io.preprocess import resize_short, short_side_shape
from augkit.limits import DEFAULT_MAX_PIXELS

#: pixels added around the reachable region (bilinear reads floor(x) and floor(x) + 1)
REACH_MARGIN = 2
#: the most a single bilinear warp shrinks by before the region is area-resized first
MAX_WARP_SCALE = 2.0


def fill_value(fill: Any) -> tuple[float, float, float, float]:
    """A recipe's fill as OpenCV's border value: one number for every channel, or one per channel."""
    if isinstance(fill, (list, tuple)):
        vals = [float(v) for v in fill][:4]
        vals += [0.0] * (4 - len(vals))
        return vals[0], vals[1], vals[2], vals[3]
    v = float(fill)
    return v, v, v, v


def warp(img: np.ndarray, inv: np.ndarray, out_hw: tuple[int, int], border: int, fill: Any, interp: int) -> np.ndarray:
    """One ``cv2.warpAffine``: output pixel (x, y) samples ``img`` at ``inv @ (x, y, 1)``."""
    return cv2.warpAffine(
        img,
        np.ascontiguousarray(inv[:2], dtype=np.float64),
        (int(out_hw[1]), int(out_hw[0])),
        flags=int(interp) | cv2.WARP_INVERSE_MAP,
        borderMode=int(border),
        borderValue=fill_value(fill),
    )


class ShapeChanged(Exception):
    """The decoded picture's shape is not the guessed one (EXIF turned it): draw the parameters again."""


@dataclass(frozen=True)
class WarpRead:
    """What the last :meth:`DecodedFile.render` read: the DCT scale denominator, the decoded size
    (height, width), the region ``(x0, y0, x1, y1)`` (exclusive ends) of it the warp used, and the
    whole-factor area shrink applied to that region first (1: none)."""

    k: int
    decoded_hw: tuple[int, int]
    region: tuple[int, int, int, int]
    shrink: int = 1

    @property
    def region_pixels(self) -> int:
        x0, y0, x1, y1 = self.region
        return (x1 - x0) * (y1 - y0)


def stretch(from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """3x3: pixel coordinates in an image of ``from_hw`` -> in an image of ``to_hw`` showing the
    same picture (pixel centres at half-pixel offsets, as cv2.resize maps them)."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def reach(m: np.ndarray, out_hw: tuple[int, int], margin: int = REACH_MARGIN) -> tuple[int, int, int, int]:
    """The source pixels a warp by ``m`` (output pixel -> source pixel) to ``out_hw`` can read:
    ``(x0, y0, x1, y1)``, exclusive ends, ``margin`` pixels added (may lie outside the source)."""
    oh, ow = out_hw
    corners = np.array([[0, 0, 1], [ow - 1, 0, 1], [0, oh - 1, 1], [ow - 1, oh - 1, 1]], dtype=np.float64)
    pts = corners @ m[:2].T
    x0, y0 = np.floor(pts.min(axis=0)).astype(int) - margin
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int) + margin + 1
    return int(x0), int(y0), int(x1), int(y1)


def dct_scale(m_full: np.ndarray, *, allowed: bool = True) -> int:
    """The JPEG DCT scale denominator for a warp by ``m_full`` (output pixel -> full-size pixel):
    the largest of 8, 4, 2 not above the matrix's smallest singular value, else 1."""
    if not allowed:
        return 1
    s = float(np.linalg.svd(m_full[:2, :2], compute_uv=False).min())
    return next((k for k in (8, 4, 2) if k <= s), 1)


class DecodedFile:
    """A file to be decoded for one training sample (:class:`~augkit.recipe.fuse.Source`).

    ``size``: the working image's shorter side; ``reduced``: JPEGs may be DCT-scaled (the decode
    policy's); ``margin``: the policy's DCT margin for :meth:`start` (the working image exactly as
    without fusion). ``last`` says what the last :meth:`render` read."""

    def __init__(
        self,
        path: str | os.PathLike,
        size: int,
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        reduced: bool = True,
        margin: int = DCT_MARGIN,
    ):
        self.path, self.size, self.max_pixels, self.reduced, self.margin = path, int(size), max_pixels, reduced, margin
        self.data = read_bytes(path, max_bytes=max_bytes_for(max_pixels))
        self.head = read_header(self.data, path, max_pixels=max_pixels)
        self.last: WarpRead | None = None
        self._bgr: tuple[int, np.ndarray] | None = None  # (k, decoded BGR) of a JPEG
        self._rgb: np.ndarray | None = None  # a decoded picture of another format (full size, RGB)
        if self.head.jpeg is None:
            self._rgb = decode_image(self.data, path, max_pixels=max_pixels)
            self._full = (int(self._rgb.shape[0]), int(self._rgb.shape[1]))
        else:
            self._full = (self.head.jpeg.height, self.head.jpeg.width)  # stored; EXIF may turn it
        self._set_shape()

    def _set_shape(self) -> None:
        h0, w0 = self._full
        k = 1
        if self.head.jpeg is not None and self.reduced:
            k = reduction(w0, h0, min_side=self.size * self.margin)
        self._start_hw = (-(-h0 // k), -(-w0 // k))
        self.shape = short_side_shape(*self._start_hw, self.size)

    def _turned(self, decoded_hw: tuple[int, int], k: int) -> None:
        """Check the decoded shape against the guess; a picture EXIF turned: re-guess and raise."""
        h0, w0 = self._full
        guess = (-(-h0 // k), -(-w0 // k))
        if decoded_hw != guess and decoded_hw == guess[::-1]:
            self._full = (w0, h0)
            self._set_shape()
            raise ShapeChanged(f"{self.path}: decoded {decoded_hw[1]}x{decoded_hw[0]}, turned by its EXIF orientation")

    # ------------------------------------------------------------------ the Source protocol
    def start(self) -> np.ndarray:
        """The working image exactly as the unfused path makes it (decode, then resize_short)."""
        if self._rgb is not None:
            return np.ascontiguousarray(resize_short(self._rgb, self.size))
        img = decode_image(
            self.data, self.path, max_pixels=self.max_pixels, min_side=self.size if self.reduced else None
        )
        k = reduction(self._full[1], self._full[0], min_side=self.size * self.margin) if self.reduced else 1
        self._turned((int(img.shape[0]), int(img.shape[1])), k)
        return np.ascontiguousarray(resize_short(img, self.size))

    def folds(self, interp: int) -> bool:
        """Runs with nearest-neighbour sampling (the policies') start from the working image: a
        nearest-neighbour shrink of the decoded picture would alias."""
        return interp != cv2.INTER_NEAREST

    def render(self, inv: np.ndarray, out_hw: tuple[int, int], border: int, fill: Any, interp: int) -> np.ndarray:
        """One warp from the file to ``out_hw``: ``inv`` maps output pixels to working-image pixels."""
        m_full = stretch(self.shape, self._full) @ inv
        if self._rgb is not None:
            img, k, bgr = self._rgb, 1, False
        else:
            assert self.head.jpeg is not None  # not decoded at construction: a JPEG
            if self._bgr is None:
                k = dct_scale(m_full, allowed=self.reduced)
                self._bgr = (k, decode_jpeg_bgr(self.data, self.head.jpeg, k, self.path))
            k, img = self._bgr
            bgr = True
            self._turned((int(img.shape[0]), int(img.shape[1])), k)
        dh, dw = int(img.shape[0]), int(img.shape[1])
        m = stretch(self._full, (dh, dw)) @ m_full
        x0, y0, x1, y1 = reach(m, out_hw)
        x0, x1 = (x0, x1) if x0 >= 0 and x1 <= dw else (0, dw)  # an axis the warp reads past: kept whole
        y0, y1 = (y0, y1) if y0 >= 0 and y1 <= dh else (0, dh)
        region = img[y0:y1, x0:x1]
        m = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]]) @ m
        shrink = 1
        s = float(np.linalg.svd(m[:2, :2], compute_uv=False).min())
        if s > MAX_WARP_SCALE:  # beyond the DCT's 1/8: average whole blocks first
            shrink = int(s)
            rh, rw = -(-region.shape[0] // shrink), -(-region.shape[1] // shrink)
            m = stretch(region.shape[:2], (rh, rw)) @ m
            region = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_AREA)
        self.last = WarpRead(k, (dh, dw), (x0, y0, x1, y1), shrink)
        if bgr:
            f = fill_value(fill)
            out = warp(region, m, out_hw, border, (f[2], f[1], f[0], f[3]), interp)
            return np.ascontiguousarray(out[..., ::-1])
        return warp(region, m, out_hw, border, fill, interp)
