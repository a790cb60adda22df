"""A decoded-image cache for training: decode and resize every image once, read it back for free.

``augkit train --cache`` (``AugmentedImageFolder(cache=...)``) stores each image as the first
step of the training pipeline makes it: decoded under augkit's decode policy (JPEGs at reduced
size where the policy allows) and resized so its shorter side is the image size. Later epochs,
and later runs at the same size, read those pixels from a memory-mapped file instead of decoding
again; the recipe still runs on every sample, so the tensors are exactly those without a cache.

Layout of a cache folder: ``pixels.u8`` (uint8 RGB pixels, appended, never rewritten) and
``index.json`` (key -> offset, height, width, checksum; replaced atomically after the pixels are
synced). The checksum is a CRC-32 of the entry's pixels seeded with its key: every read is
checked (~30 us for 224 px), so pixels overwritten in the store, or index entries swapped between
images, are never used: such an image is decoded from its file instead, and the next build
(the next run) decodes it again into the store and says so. An index that cannot be read or
does not have this layout is rebuilt with a warning (delete the folder to reclaim the old pixels).
A key is the blake2b hash of the file's *content*, its size in bytes, the short side and the
decode policy, so a file that changes (even keeping its name and time) gets a new key and is
decoded again, and one cache folder can serve several sizes and datasets. Entries of files
that changed are not reclaimed: delete the folder to start afresh. One process builds at a
time (a lock file); DataLoader workers open the memory map lazily, each in its own process.

Before building, the cache says how much it will add; it refuses (:class:`UsageError`, exit 2)
when the disk does not have that much free space, and warns when the whole store is larger than
the machine's memory (it then still works, read from disk through the page cache).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from augkit.devices import usable_cores
from augkit.errors import ImageError, UsageError
from augkit.io.fileio import atomic_write_text, read_bytes
from augkit.io.images import DECODE_POLICY, decode_policy_reduces, image_size, max_bytes_for, read_image
from augkit.io.preprocess import resize_short
from augkit.limits import DEFAULT_MAX_PIXELS

PIXELS, INDEX, LOCK = "pixels.u8", "index.json", ".lock"
FORMAT = "augkit-cache-v2"  # v2: entries carry a checksum (v1 stores are rebuilt)
FREE_MARGIN = 64 << 20  # bytes left free on the disk after building


class ImageCache:
    """Decoded images with shorter side ``size``, in ``folder`` (created when needed)."""

    def __init__(
        self,
        folder: str | os.PathLike,
        size: int,
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        on_note: Callable[[str], None] | None = None,
        threads: int | None = None,
    ):
        self.folder, self.size, self.max_pixels = Path(folder), int(size), max_pixels
        self.reduced = decode_policy_reduces(DECODE_POLICY)
        self.policy = f"{DECODE_POLICY}; short side {self.size}; reduced={self.reduced}"
        self.on_note, self.threads = on_note, threads or min(8, usable_cores())
        self.keys: dict[str, str] = {}  # path -> key
        self._entries: dict[str, list[int]] = {}  # key -> [offset, height, width, checksum]
        self._mm: np.memmap | None = None
        self._pid = -1

    # ------------------------------------------------------------------ building
    def prepare(self, paths: Sequence[str]) -> list[ImageError]:
        """Key every file and decode those not cached yet; returns the files that failed
        (left out by the caller, as its construction check would)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.folder / LOCK, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time
                return self._prepare_locked(paths)
        except OSError as exc:
            raise UsageError(f"cache {exc.filename or self.folder}: {exc.strerror or exc}") from None

    def _prepare_locked(self, paths: Sequence[str]) -> list[ImageError]:
        self._entries = self._load_index()
        self._mm = None
        with ThreadPoolExecutor(self.threads) as pool:
            keyed = list(pool.map(self._key, paths))
        errors = [k for k in keyed if isinstance(k, ImageError)]
        damaged: set[str] = set()
        todo: dict[str, tuple[str, int]] = {}  # key -> (path, estimated bytes): a file listed twice is decoded once
        for path, k in zip(paths, keyed):
            if isinstance(k, ImageError):
                continue
            key, estimate = k
            self.keys[path] = key
            if key in self._entries and not self._intact(key):
                damaged.add(key)
                del self._entries[key]
            if key not in self._entries:
                todo.setdefault(key, (path, estimate))
        if damaged:
            self._note(
                f"warning: cache {self.folder}: {len(damaged)} stored image(s) did not match their checksum "
                "(the store was changed): decoding them again"
            )
        self._check_space(len(paths) - len(errors), todo)
        if todo:
            errors += self._build(todo)
        return errors

    def _key(self, path: str) -> tuple[str, int] | ImageError:
        """(key, estimated cached bytes) of a file, from its content and header."""
        try:
            limit = max_bytes_for(self.max_pixels) if self.max_pixels is not None else None
            data = read_bytes(path, max_bytes=limit)
        except ImageError as exc:
            return exc
        digest = hashlib.blake2b(data, digest_size=16)
        digest.update(self.policy.encode())
        wh = image_size(data) or (self.size, self.size)
        short, long = min(wh), max(wh)
        estimate = self.size * max(self.size, round(long * self.size / max(1, short))) * 3
        return f"{digest.hexdigest()}-{len(data)}", estimate

    def _check_space(self, n: int, todo: dict) -> None:
        need = sum(est for _, est in todo.values())
        total = (self._pixels_path().stat().st_size if self._pixels_path().exists() else 0) + need
        self._note(
            f"cache {self.folder}: {n - len(todo)} of {n} images already decoded; adding {len(todo)} "
            f"(about {_mb(need)}), {_mb(total)} in all"
        )
        free = shutil.disk_usage(self.folder).free
        if need + FREE_MARGIN > free:
            raise UsageError(
                f"cache {self.folder}: needs about {_mb(need)} but the disk has {_mb(free)} free; "
                "free some space, pass another cache folder, or train without --cache"
            )
        ram = _physical_memory()
        if ram and total > ram:
            self._note(
                f"warning: the cache ({_mb(total)}) is larger than this machine's memory ({_mb(ram)}): "
                "it will be read from disk"
            )

    def _build(self, todo: dict[str, tuple[str, int]]) -> list[ImageError]:
        """Decode the missing images (in threads), append their pixels, then publish the index."""
        errors: list[ImageError] = []
        items = list(todo.items())
        with ThreadPoolExecutor(self.threads) as pool, open(self._pixels_path(), "ab") as fh:
            offset = fh.seek(0, os.SEEK_END)
            for (key, _entry), img in zip(items, pool.map(lambda it: self._decode(it[1][0]), items)):
                if isinstance(img, ImageError):
                    errors.append(img)
                    continue
                fh.write(img.tobytes())
                self._entries[key] = [offset, int(img.shape[0]), int(img.shape[1]), _checksum(key, img)]
                offset += img.nbytes
            fh.flush()
            os.fsync(fh.fileno())
        atomic_write_text(self.folder / INDEX, json.dumps({"format": FORMAT, "entries": self._entries}))
        failed = {e.path for e in errors}
        self.keys = {p: k for p, k in self.keys.items() if p not in failed}
        return errors

    def _decode(self, path: str) -> np.ndarray | ImageError:
        try:
            img = read_image(path, max_pixels=self.max_pixels, min_side=self.size if self.reduced else None)
        except ImageError as exc:
            return exc
        return np.ascontiguousarray(resize_short(img, self.size))

    def _load_index(self) -> dict[str, list[int]]:
        """The index's entries that fit the pixels file; an index that cannot be read, or is not
        this format, is rebuilt from scratch (warned; the new pixels are appended)."""
        path = self.folder / INDEX
        if not path.is_file():
            return {}
        size = self._pixels_path().stat().st_size if self._pixels_path().exists() else 0
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            entries = doc["entries"] if isinstance(doc, dict) and doc.get("format") == FORMAT else None
        except (OSError, ValueError, KeyError):
            entries = None
        if not isinstance(entries, dict):
            self._note(f"warning: cache {path} is damaged or from another augkit: rebuilding the cache")
            return {}  # the pixels file is not cut: another run may be reading it through its memory map
        good = {k: v for k, v in entries.items() if isinstance(k, str) and _valid_entry(v, size)}
        if len(good) < len(entries):
            self._note(f"warning: cache {path}: {len(entries) - len(good)} damaged entries dropped (decoded again)")
        return good

    def _intact(self, key: str) -> bool:
        """Whether an entry's stored pixels still match its checksum."""
        offset, h, w, crc = self._entries[key]
        return _checksum(key, self._read(offset, h, w)) == crc

    def _read(self, offset: int, h: int, w: int) -> np.ndarray:
        n = h * w * 3
        if self._mm is None or self._pid != os.getpid() or offset + n > len(self._mm):
            self._mm, self._pid = np.memmap(self._pixels_path(), dtype=np.uint8, mode="r"), os.getpid()
        return np.array(self._mm[offset : offset + n]).reshape(h, w, 3)

    # ------------------------------------------------------------------ reading
    def __contains__(self, path: str) -> bool:
        return path in self.keys

    def get(self, path: str) -> np.ndarray:
        """The cached image of ``path`` (RGB uint8, shorter side ``size``): a private copy. Pixels
        that fail their checksum are never returned: the file is decoded instead."""
        key = self.keys[path]
        offset, h, w, crc = self._entries[key]
        try:
            img = self._read(offset, h, w)
        except (OSError, ValueError):  # the pixels file was cut or removed
            img = None
        if img is not None and _checksum(key, img) == crc:
            return img
        fresh = self._decode(path)
        if isinstance(fresh, ImageError):
            raise fresh
        return fresh

    def _pixels_path(self) -> Path:
        return self.folder / PIXELS

    def _note(self, text: str) -> None:
        if self.on_note is not None:
            self.on_note(text)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_mm"], state["_pid"], state["on_note"] = None, -1, None  # each process maps the file itself
        return state


def _checksum(key: str, img: np.ndarray) -> int:
    """CRC-32 of the pixels, seeded with the key: pixels moved to another entry do not match."""
    return zlib.crc32(np.ascontiguousarray(img).data, zlib.crc32(key.encode()))


def _valid_entry(v, size: int) -> bool:
    return (
        isinstance(v, list)
        and len(v) == 4
        and all(type(x) is int for x in v)
        and v[0] >= 0
        and v[1] > 0
        and v[2] > 0
        and v[0] + v[1] * v[2] * 3 <= size
    )


def _mb(n: int) -> str:
    if n < 2**20:
        return f"{n / 2**10:,.0f} KiB"
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
