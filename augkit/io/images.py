"""Image files in and out: one decode policy for augment, train and predict.

Decode policy ``augkit-v3`` (documented in the README, saved with every model):

* Files are read as bytes (special files refused, reads bounded, see :mod:`augkit.io.fileio`)
  and decoded by *content*, not by extension (a PNG named ``.jpg`` decodes as the PNG it is).
* Output is always 3-channel RGB ``uint8`` (H, W, 3).
* JPEG EXIF orientation is applied (the picture is shown as a camera viewer shows it).
* Grayscale is replicated to 3 channels; palette images are expanded; 16-bit images are
  scaled to 8 bits (``round(v / 257)``).
* Alpha is composited over white: fully transparent pixels become white.
* From the header, before any pixel is decoded: more than ``max_pixels`` pixels is
  "too large" (decompression-bomb guard); a side over :data:`MAX_SIDE` or an aspect ratio
  over :data:`MAX_ASPECT` is "bad dimensions".
* A JPEG ends at its end-of-image marker, found by walking its markers (:mod:`augkit.io.jpeg`);
  data after it (a motion photo's video) is ignored; a JPEG without one is "truncated". A
  baseline JPEG whose scan data stops early (a file cut short with an EOI appended, which
  libjpeg would finish in flat grey) is "truncated" too; it is never decoded half-grey.
* Decoding to the size that is needed: ``min_side=S`` (the consumer needs a short side of at
  least S) and ``max_side=N`` (the long side is shrunk to N, never enlarged) let a JPEG decode
  with libjpeg's DCT scaling at 1/2, 1/4 or 1/8: the largest reduction that keeps the decoded
  side at least :data:`DCT_MARGIN` (2) times the needed size, so the area resize that follows
  still averages 2x2 or more source pixels per output pixel. ``max_side`` then area-resizes
  (``INTER_AREA``) to exactly N, the same as it does after a full decode (other formats); a
  ``min_side`` result is not resized: the caller resizes it exactly as before. Against a full
  decode plus the same area resize: >= 35 dB PSNR on scikit-image's photos at their natural
  size for 32-224 px (tests/test_reduced_decode.py), while a 12 MP photo (4032x3024) still
  decodes at 1/4 for 224 px and at 1/8 up to 189 px.

Earlier policies, still decoded exactly as they were for models saved under them
(:data:`LEGACY_DECODE_POLICIES`, :func:`decode_policy_margin`):

* v2 (``augkit-v2``) reduced as far as the needed size itself (margin 1): a 500x375 photo
  decoded at 1/2 for 128 px lost detail (24 dB PSNR at worst against a full decode).
* v1 (``augkit-v1``) decoded every JPEG at full size; ``reduced=False`` decodes that way, and
  :func:`decode_policy_reduces` tells which a saved policy string asks for.

Why the shape limits: nothing a camera or scanner makes is 100 times longer than wide
(panoramas are ~10:1, 360-degree strips 2:1 to 6:1), while a 1 x 999,999 file of a few KB
passes any pixel limit and then makes "resize the short side to 224" build a 224 x 224M
image. :data:`MAX_SIDE` is the largest side a JPEG can store, so every accepted image can be
written back, and it keeps OpenCV (which stops at 2^20) from raising.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from augkit.errors import ImageError, UsageError
from augkit.io.fileio import atomic_write_bytes, atomic_write_text, is_temp_name, read_bytes, temp_name  # noqa: F401 (public here)
from augkit.io.jpeg import JpegInfo, JpegStructureError, reduction, walk_jpeg, with_probe
from augkit.io.scan import IGNORED_NAMES, IMAGE_EXTENSIONS, Scan, is_ignored, is_image_name, scan_folder  # noqa: F401 (public here)
from augkit.limits import DEFAULT_MAX_PIXELS  # noqa: F401 (public here)

DECODE_POLICY = (
    "augkit-v3: rgb uint8, exif-oriented, alpha over white, 16-bit/257, jpeg dct-reduced to >= 2x the needed size"
)
#: Decode policies of earlier augkit versions that this one reproduces exactly (v1: full decoding,
#: ``reduced=False``; v2: ``margin=1``), so models saved under them keep working.
LEGACY_DECODE_POLICIES = (
    "augkit-v1: rgb uint8, exif-oriented, alpha over white, 16-bit/257",
    "augkit-v2: rgb uint8, exif-oriented, alpha over white, 16-bit/257, jpeg dct-reduced to the needed size",
)
#: Policy v3: a JPEG is DCT-reduced only while the decoded side stays >= this times the needed size.
DCT_MARGIN = 2
#: Longest side / shortest side, checked from the header (reason "bad dimensions"); see above.
MAX_ASPECT = 100
#: Longest side in pixels, checked from the header (reason "bad dimensions"); JPEG's own limit.
MAX_SIDE = 65_535

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"
_POLICY_VERSION = re.compile(r"^augkit-v(\d+):")
_BYTES_PER_PIXEL = 8  # uncompressed 16-bit RGBA: no honest encoding of an image is larger
_BYTES_HEADROOM = 64 << 20  # metadata, ICC profiles, a motion photo's video after the JPEG
_REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}  # all apply EXIF orientation, like IMREAD_COLOR


def decode_policy_reduces(policy: str) -> bool:
    """Whether a saved decode policy string allows reduced (DCT-scaled) JPEG decoding.

    ``augkit-v1`` strings (and any string augkit did not write): False, so a model trained
    under v1 is fed full decodes, exactly as in training."""
    m = _POLICY_VERSION.match(policy or "")
    return m is not None and int(m.group(1)) >= 2


def decode_policy_margin(policy: str) -> int:
    """The ``margin`` that :func:`decode_image` takes to decode as a saved policy did: 1 for
    ``augkit-v2`` (reduced as far as the needed size), :data:`DCT_MARGIN` for v3 and the current
    policy. (v1 does not reduce at all: see :func:`decode_policy_reduces`.)"""
    m = _POLICY_VERSION.match(policy or "")
    return 1 if m and int(m.group(1)) == 2 else DCT_MARGIN


def max_bytes_for(max_pixels: int | None) -> int | None:
    """The largest file accepted under a pixel limit: an uncompressed 16-bit RGBA image of
    ``max_pixels`` pixels plus 64 MiB of metadata. None (no pixel limit): no byte limit."""
    if max_pixels is None:
        return None
    return _BYTES_PER_PIXEL * int(max_pixels) + _BYTES_HEADROOM


def _sniff(data: bytes) -> str | None:
    if data.startswith(_JPEG):
        return "jpeg"
    if data.startswith(_PNG):
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


# ---------------------------------------------------------------- headers


@dataclass(frozen=True)
class Header:
    """What the header says: ``kind`` ("jpeg", "png", ...), ``size`` (width, height) or None
    when the header is not understood, ``jpeg`` the marker walk of a JPEG."""

    kind: str
    size: tuple[int, int] | None
    jpeg: JpegInfo | None = None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header only, or None when the header is not understood."""
    if data.startswith(_JPEG):
        try:
            info = walk_jpeg(data)
        except JpegStructureError:
            return None
        return info.width, info.height
    from PIL import Image  # deferred: pillow is needed only for non-JPEG headers

    Image.MAX_IMAGE_PIXELS = None  # we apply our own limit, with our own message
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:
        return None


def check_dimensions(
    width: int, height: int, path: str | os.PathLike = "<bytes>", *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> None:
    """Refuse sizes no step can handle: "too large" (pixel limit), "bad dimensions" (empty,
    a side over :data:`MAX_SIDE`, an aspect ratio over :data:`MAX_ASPECT`)."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(path, "too large", f"{width}x{height} = {width * height:,} pixels > limit {max_pixels:,}")
    if width < 1 or height < 1:
        raise ImageError(path, "bad dimensions", f"{width}x{height}: no pixels")
    if max(width, height) > MAX_SIDE:
        raise ImageError(path, "bad dimensions", f"{width}x{height}: a side over {MAX_SIDE:,} pixels")
    if max(width, height) > MAX_ASPECT * min(width, height):
        ratio = max(width, height) / min(width, height)
        raise ImageError(path, "bad dimensions", f"{width}x{height}: aspect ratio {ratio:,.0f}:1 > {MAX_ASPECT}:1")


def read_header(
    data: bytes, path: str | os.PathLike = "<bytes>", *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Header:
    """Signature, size and shape limits, and (JPEG) where the stream ends; no pixel decoded."""
    if not data:
        raise ImageError(path, "not an image", "empty file")
    kind = _sniff(data)
    if kind is None:
        raise ImageError(path, "not an image", "unknown file signature")
    info = None
    if kind == "jpeg":
        try:
            info = walk_jpeg(data)
        except JpegStructureError as exc:
            raise ImageError(path, exc.reason, exc.detail) from None
        size: tuple[int, int] | None = (info.width, info.height)
    else:
        size = image_size(data)
    if size is not None:
        check_dimensions(*size, path, max_pixels=max_pixels)
    return Header(kind, size, info)


def png_complete(data: bytes) -> bool:
    """Whether a PNG's chunks reach IEND (a jump per chunk, no pass over the pixel data)."""
    pos, n = len(_PNG), len(data)
    while pos + 8 <= n:
        length = int.from_bytes(data[pos : pos + 4], "big")
        if data[pos + 4 : pos + 8] == b"IEND":
            return True
        pos += 12 + length
    return False


def check_image_bytes(
    data: bytes, path: str | os.PathLike = "<bytes>", *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> None:
    """A cheap check that ``data`` will decode: signature, header, size and shape limits, end marker.

    Raises :class:`ImageError` with the reasons of :func:`decode_image` ("not an image",
    "too large", "bad dimensions", "truncated") without decoding the pixels. Not caught here
    (it needs the pixels): a baseline JPEG cut short with an end marker appended.
    """
    head = read_header(data, path, max_pixels=max_pixels)
    if head.kind == "png" and not png_complete(data):
        raise ImageError(path, "truncated", "PNG has no IEND chunk")
    if head.size is None:
        raise ImageError(path, "not an image", "no readable image header")


def check_image_file(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """:func:`check_image_bytes` on a file, read as :func:`read_image` reads it (bounded)."""
    check_image_bytes(read_bytes(path, max_bytes=max_bytes_for(max_pixels)), path, max_pixels=max_pixels)


# ---------------------------------------------------------------- decoding


def decode_image(
    data: bytes,
    path: str | os.PathLike = "<bytes>",
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
    max_side: int | None = None,
    reduced: bool = True,
    margin: int = DCT_MARGIN,
) -> np.ndarray:
    """Decode bytes to RGB uint8 (H, W, 3) under the decode policy above.

    ``min_side``/``max_side``: see the policy (``max_side`` wins when both are given and
    disagree); ``reduced=False``: no DCT scaling (policy v1's decode); ``margin``: how many
    times the needed size a DCT-reduced JPEG keeps (policy v3: 2; v2: 1)."""
    _check_side_arg("min_side", min_side)
    _check_side_arg("max_side", max_side)
    _check_side_arg("margin", margin)
    head = read_header(data, path, max_pixels=max_pixels)
    if head.jpeg is not None:
        k = 1
        if reduced:
            need_short = None if min_side is None else min_side * margin
            need_long = None if max_side is None else max_side * margin
            k = reduction(head.jpeg.width, head.jpeg.height, min_side=need_short, max_side=need_long)
        img = _decode_jpeg(data, head.jpeg, k, path)
    else:
        img = _decode_other(data, head.kind, path)
        if head.size is None:  # header not understood: hold the decoded picture to the same limits
            check_dimensions(img.shape[1], img.shape[0], path, max_pixels=max_pixels)
    img = _to_rgb8(img)
    if max_side is not None:
        img = _fit_long_side(img, head.size or (img.shape[1], img.shape[0]), max_side)
    return img


def _check_side_arg(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
        raise UsageError(f"{name} must be a positive number of pixels, got {value!r}")


def _imdecode(data: bytes, flags: int, path: str | os.PathLike, kind: str) -> np.ndarray:
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error as exc:  # OpenCV raises (rather than returning None) on some limits
        raise ImageError(path, "not an image", f"{kind}: {str(exc).strip().splitlines()[-1][:200]}") from None
    if img is None or img.size == 0:
        reason = "truncated" if kind == "png" and not png_complete(data) else "not an image"
        raise ImageError(path, reason, f"{kind} data could not be decoded")
    return img


def _decode_jpeg(data: bytes, info: JpegInfo, k: int, path: str | os.PathLike) -> np.ndarray:
    """Decode at 1/k scale (EXIF-oriented BGR); refuse a scan that stopped early.

    libjpeg fills the blocks after a premature end with flat grey (exactly 128). Only when a
    corner is exactly that grey is the file decoded a second time with :data:`~augkit.io.jpeg.PROBE`
    inserted before EOI: a complete scan decodes the same, a cut one does not. A progressive
    file cut inside its last scan decodes blurred, not grey: progressive files are always
    probed (a second decode; a cut before the last scan is found by the marker walk, free)."""
    flags = _REDUCED_FLAGS[k]
    img = _imdecode(data, flags, path, "jpeg")
    if (info.progressive or _grey_corner(img)) and not np.array_equal(
        img, _imdecode(with_probe(data, info), flags, path, "jpeg")
    ):
        how = "blurred: its last progressive scan is cut" if info.progressive else "grey"
        raise ImageError(path, "truncated", f"JPEG data ends early (the rest would decode {how})")
    return img


def decode_jpeg_bgr(data: bytes, info: JpegInfo, k: int, path: str | os.PathLike = "<bytes>") -> np.ndarray:
    """A JPEG (``info`` from :func:`read_header`, whose limits it has passed) decoded at 1/``k`` scale
    (1, 2, 4, 8), EXIF-oriented, truncation checked, still in OpenCV's BGR order: the policy's RGB is
    ``[..., ::-1]`` of it. For callers that keep only part of the picture (:mod:`augkit.io.warped`)
    and so convert only that part."""
    if k not in _REDUCED_FLAGS:
        raise UsageError(f"JPEG scale denominator must be one of {', '.join(map(str, _REDUCED_FLAGS))}, got {k!r}")
    return _decode_jpeg(data, info, k, path)


def _grey_corner(img: np.ndarray) -> bool:
    """Whether a corner pixel (where the last block lands, whatever the EXIF rotation) is exactly 128."""
    corners = img[[0, 0, -1, -1], [0, -1, 0, -1]].reshape(4, -1)
    return bool((corners == 128).all(axis=1).any())


def _decode_other(data: bytes, kind: str, path: str | os.PathLike) -> np.ndarray:
    return _imdecode(data, cv2.IMREAD_UNCHANGED, path, kind)


def _fit_long_side(img: np.ndarray, full_size: tuple[int, int], max_side: int) -> np.ndarray:
    """Area-resize so the long side is exactly ``max_side`` (never enlarge).

    The output size comes from the *full* size (EXIF-oriented like ``img``), so a reduced and
    a full decode of the same file give the same shape."""
    w0, h0 = full_size
    h, w = img.shape[:2]
    if (w >= h) != (w0 >= h0):
        w0, h0 = h0, w0  # EXIF rotated the picture by 90 degrees
    if max(w0, h0) <= max_side:
        return img
    scale = max_side / max(w0, h0)
    size = (max_side, max(1, round(h0 * scale))) if w0 >= h0 else (max(1, round(w0 * scale)), max_side)
    if (w, h) == size:
        return img
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _to_rgb8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 2:  # gray + alpha
        gray, alpha = img[:, :, 0], img[:, :, 1]
        return _over_white(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB), alpha)
    if channels == 4:
        return _over_white(cv2.cvtColor(img, cv2.COLOR_BGRA2RGB), img[:, :, 3])
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.uint16)[:, :, None]
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def read_image(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
    max_side: int | None = None,
    reduced: bool = True,
    margin: int = DCT_MARGIN,
) -> np.ndarray:
    """Read (bounded by :func:`max_bytes_for`) and decode one image file; raises
    :class:`ImageError` with the path and reason. Keywords as in :func:`decode_image`."""
    data = read_bytes(path, max_bytes=max_bytes_for(max_pixels))
    return decode_image(
        data, path, max_pixels=max_pixels, min_side=min_side, max_side=max_side, reduced=reduced, margin=margin
    )


# ---------------------------------------------------------------- writing

OUTPUT_FORMATS = {"jpg": ".jpg", "jpeg": ".jpg", "png": ".png", "webp": ".webp", "bmp": ".bmp"}


def encode_image(img: np.ndarray, ext: str, *, quality: int = 95, path: str | os.PathLike | None = None) -> bytes:
    """Encode RGB uint8 to bytes of the format named by ``ext`` (``.jpg``, ``.png``, ...).

    Failure (e.g. a side over WebP's 16383 or JPEG's 65535 pixels) is an :class:`ImageError`
    "encode failed" naming ``path`` (or the format) and the size, never a ``cv2.error``."""
    ext = ext.lower()
    params: list[int] = []
    if ext in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif ext == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    elif ext == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    bgr = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    try:
        ok, buf = cv2.imencode(ext if ext != ".jpeg" else ".jpg", bgr, params)
    except cv2.error:
        ok = False
    if not ok:
        raise ImageError(
            path if path is not None else f"<{ext}>", "encode failed", f"{img.shape[1]}x{img.shape[0]} image to {ext}"
        )
    return buf.tobytes()


def write_image(img: np.ndarray, path: str | os.PathLike, *, quality: int = 95) -> None:
    atomic_write_bytes(path, encode_image(img, Path(path).suffix, quality=quality, path=path))


@contextlib.contextmanager
def opencv_threads(n: int):
    """Run with ``n`` OpenCV threads, restoring the caller's setting afterwards.

    Set in the parent before DataLoader workers fork: each worker then decodes with one thread
    (no oversubscription), and no child inherits a busy thread pool (calling
    ``cv2.setNumThreads`` inside a forked worker can deadlock)."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(before)
