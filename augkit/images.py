"""Image files in and out: one decode policy for augment, train and predict.

Decode policy (documented in the README, saved with every model):

* Files are read as bytes and decoded by *content*, not by extension (a PNG named
  ``.jpg`` decodes as the PNG it is).
* Output is always 3-channel RGB ``uint8`` (H, W, 3).
* JPEG EXIF orientation is applied (the picture is shown as a camera viewer shows it).
* Grayscale is replicated to 3 channels; palette images are expanded; 16-bit images are
  scaled to 8 bits (``round(v / 257)``).
* Alpha is composited over white: fully transparent pixels become white.
* Images with more than ``max_pixels`` pixels are rejected from their header, before
  any pixel is decoded (decompression-bomb guard).
* A JPEG that does not end with its end-of-image marker is rejected as truncated;
  it is never decoded half-grey.
"""
from __future__ import annotations

import contextlib
import io
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageError, UsageError

DECODE_POLICY = "augkit-v1: rgb uint8, exif-oriented, alpha over white, 16-bit/257"
DEFAULT_MAX_PIXELS = 100_000_000
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store", "__macosx", ".ipynb_checkpoints"})

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"


def is_ignored(name: str) -> bool:
    """Hidden files (``.x``, AppleDouble ``._x``), OS litter and notebook checkpoints."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def is_image_name(name: str) -> bool:
    return not is_ignored(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS


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


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a file, turning OS errors into :class:`ImageError` with a short reason."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError(path, "not found") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory") from None
    except OSError as exc:
        raise ImageError(path, "unreadable", exc.strerror or str(exc)) from None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header only, or None when the header is not understood."""
    from PIL import Image  # pillow comes with torchvision; used for header parsing only

    Image.MAX_IMAGE_PIXELS = None  # we apply our own limit, with our own message
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:
        return None


def decode_image(data: bytes, path: str | os.PathLike = "<bytes>", *,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode bytes to RGB uint8 (H, W, 3) under the decode policy above."""
    if not data:
        raise ImageError(path, "not an image", "empty file")
    kind = _sniff(data)
    if kind is None:
        raise ImageError(path, "not an image", "unknown file signature")
    if max_pixels is not None:
        size = image_size(data)
        if size is not None and size[0] * size[1] > max_pixels:
            raise ImageError(path, "too large",
                             f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels > limit {max_pixels:,}")
    if kind == "jpeg":
        tail = data.rstrip(b"\x00\r\n \t")
        if not tail.endswith(b"\xff\xd9"):
            raise ImageError(path, "truncated", "JPEG has no end-of-image marker")
    buf = np.frombuffer(data, dtype=np.uint8)
    if kind == "jpeg":
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)  # applies EXIF orientation
    else:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        reason = "truncated" if kind == "png" and b"IEND" not in data[-64:] else "not an image"
        raise ImageError(path, reason, f"{kind} data could not be decoded")
    return _to_rgb8(img)


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


def read_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode one image file; raises :class:`ImageError` with the path and reason."""
    return decode_image(read_bytes(path), path, max_pixels=max_pixels)


# ---------------------------------------------------------------- writing

OUTPUT_FORMATS = {"jpg": ".jpg", "jpeg": ".jpg", "png": ".png", "webp": ".webp", "bmp": ".bmp"}


def encode_image(img: np.ndarray, ext: str, *, quality: int = 95) -> bytes:
    """Encode RGB uint8 to bytes of the format named by ``ext`` (``.jpg``, ``.png``, ...)."""
    ext = ext.lower()
    params: list[int] = []
    if ext in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif ext == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    elif ext == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    bgr = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(ext if ext != ".jpeg" else ".jpg", bgr, params)
    if not ok:
        raise ImageError(f"<{ext}>", "encode failed")
    return buf.tobytes()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a hidden temp file in the target folder, fsync, then ``os.replace``.

    A reader (or a resumed run) sees either no file or the complete file, never a partial one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if tmp.stat().st_size != len(data):
            raise OSError(28, "short write (disk full?)", str(tmp))
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_image(img: np.ndarray, path: str | os.PathLike, *, quality: int = 95) -> None:
    atomic_write_bytes(path, encode_image(img, Path(path).suffix, quality=quality))


# ---------------------------------------------------------------- scanning

@dataclass
class Scan:
    """What a folder holds. ``items`` are (relative posix path, class name) in sorted order."""

    root: Path
    items: list[tuple[str, str]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    flat: bool = False


def scan_folder(root: str | os.PathLike, *, exclude: str | os.PathLike | None = None) -> Scan:
    """List the image files under ``root``.

    Class layout: each first-level folder is a class (``root/cat/x.jpg`` -> ``cat``); deeper
    folders keep their relative path and belong to their first-level class. A folder with
    images directly in it and no class folders is *flat* (class ``""``). Hidden files, OS
    litter and non-image files are ignored (and listed in ``ignored``). Symlinked folders
    are followed once; loops are cut. ``exclude`` is a folder never to descend into.
    """
    root = Path(root)
    if not root.exists():
        raise UsageError(f"{root}: folder not found")
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder")
    excluded = Path(exclude).resolve() if exclude else None
    scan = Scan(root=root)
    seen: set[tuple[int, int]] = set()
    class_dirs: list[str] = []
    files: list[str] = []

    def walk(rel: str) -> None:
        here = root / rel if rel else root
        try:
            st = here.stat()
        except OSError:
            scan.ignored.append(rel or ".")
            return
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return  # symlink loop or second link to the same folder
        seen.add(key)
        if excluded is not None and here.resolve() == excluded:
            return
        try:
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError:
            scan.ignored.append(rel or ".")
            return
        for e in entries:
            sub = f"{rel}/{e.name}" if rel else e.name
            if is_ignored(e.name):
                scan.ignored.append(sub)
                continue
            try:
                is_dir = e.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                if not rel:
                    class_dirs.append(e.name)
                walk(sub)
            elif is_image_name(e.name):
                files.append(sub)
            else:
                scan.ignored.append(sub)

    walk("")

    def order(f: str) -> tuple[str, str, str]:
        # torchvision ImageFolder order: class, then folder (os.walk, sorted), then file name
        head, _, name = f.rpartition("/")
        return (f.split("/", 1)[0] if "/" in f else "", head, name)

    nested = [f for f in files if "/" in f]
    counts = {c: 0 for c in class_dirs}
    for f in nested:
        counts[f.split("/", 1)[0]] += 1
    scan.classes = sorted(c for c, n in counts.items() if n)
    scan.empty_classes = sorted(c for c, n in counts.items() if not n)
    scan.flat = not scan.classes
    # loose files beside class folders are kept (class ""), so nothing is silently dropped
    scan.items = [(f, f.split("/", 1)[0] if "/" in f else "") for f in sorted(files, key=order)]
    return scan


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
