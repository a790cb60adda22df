"""Bounded, safe reads and atomic writes of whole files.

Reads never block and never run away: a FIFO, socket or device named ``x.jpg`` is refused
from ``os.stat`` before it is opened (opening a FIFO for reading waits for a writer forever;
``/dev/zero`` never ends), and a read stops after ``max_bytes + 1`` bytes even when the file
grows while it is read.

Writes are atomic: a hidden temp file ``.<name>.<hex8>.tmp`` in the target folder, fsync,
then ``os.replace``. Temp names always fit the 255-byte file name limit (the name part is
cut on a UTF-8 character boundary), so a long output name never stops a run at its temp.

Group commit (:class:`Staged`, Linux): a thread that writes many small files can stage them
instead: inside ``with staging(batch):`` :func:`atomic_write_bytes` writes the temp file and
returns; ``batch.commit()`` then makes every staged file durable with ONE ``syncfs`` of each
file system they are on, and only then renames them into place, in order. A reader or a resumed
run still sees each file whole or not at all (a killed run leaves temps, which resumes delete),
and nothing is visible before it is on disk; what changes is that the barrier (a journal commit
and a cache flush) is paid once per batch rather than once per file: per output file it cost
0.2-0.5 ms of CPU here (ext4, fsync each), a labelled output writes two. This is git's
``core.fsyncMethod=batch`` idea, with ``syncfs`` as the barrier (it also flushes other
processes' dirty data on that file system; batches are small so that a busy disk costs little).
Where ``syncfs`` is missing (macOS, Windows) staging is off and each write syncs itself.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import secrets
import stat
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from augkit.errors import ImageError

#: Longest file name (in bytes) on the file systems augkit writes to (ext4, XFS, APFS, NTFS).
NAME_MAX = 255
_TEMP_RE = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$", re.DOTALL)
_TEMP_OVERHEAD = len(".") + len(".") + 8 + len(".tmp")
_CHUNK = 1 << 20


def read_bytes(path: str | os.PathLike, *, max_bytes: int | None = None) -> bytes:
    """Read a whole regular file, turning OS errors into :class:`ImageError` with a short reason.

    Reasons: "not found", "permission denied", "is a directory", "not a regular file"
    (FIFO, socket, device; refused without opening it for reading), "too large" (more than
    ``max_bytes`` bytes), "unreadable" (any other OS error).
    """
    try:
        st = os.stat(path)  # follows symlinks: a link to /dev/zero or to a FIFO is judged by its target
        _check_stat(path, st, max_bytes)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)  # O_NONBLOCK: a FIFO swapped in after the stat cannot block the open
        try:
            st = os.fstat(fd)
            _check_stat(path, st, max_bytes)
            data = _read_fd(fd, st.st_size, max_bytes)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise ImageError(path, "not found") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory") from None
    except OSError as exc:
        raise ImageError(path, "unreadable", exc.strerror or str(exc)) from None
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageError(path, "too large", f"more than {max_bytes:,} bytes (it grew while being read)")
    return data


def _check_stat(path: str | os.PathLike, st: os.stat_result, max_bytes: int | None) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(path, *_folder_reason(path))
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(path, "not a regular file", _kind(st.st_mode))
    if max_bytes is not None and st.st_size > max_bytes:
        raise ImageError(path, "too large", f"{st.st_size:,} bytes > limit {max_bytes:,}")


def _folder_reason(path: str | os.PathLike) -> tuple[str, str]:
    """Why a folder given as an input is not read: "is a directory", or "permission denied" for a
    folder a scan could not list (prediction keeps such folders as inputs so that they are reported)."""
    try:
        with os.scandir(os.fspath(path)):
            pass
    except PermissionError:
        return "permission denied", "a folder that could not be listed: its images were not read"
    except OSError:
        pass
    return "is a directory", ""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "a special file"


def _read_fd(fd: int, size_hint: int, max_bytes: int | None) -> bytes:
    """Read to EOF, or to ``max_bytes + 1`` bytes: one read for an honest file, a bounded loop
    for one that grows or whose size ``stat`` does not report (procfs)."""
    limit = None if max_bytes is None else max_bytes + 1
    chunks: list[bytes] = []
    total, want = 0, size_hint + 1
    while limit is None or total < limit:
        n = want if limit is None else min(want, limit - total)
        chunk = os.read(fd, n)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        want = _CHUNK
    return b"".join(chunks)  # one chunk: returned as is, no copy


# ---------------------------------------------------------------- atomic writes


def temp_name(name: str) -> str:
    """The hidden temp name for ``name``: ``.<name>.<hex8>.tmp``, at most 255 bytes.

    A name too long for that is cut (in its file-system encoding, on a character boundary);
    the random part keeps cut names apart."""
    raw = os.fsencode(name)
    room = NAME_MAX - _TEMP_OVERHEAD
    if len(raw) > room:
        cut = room
        while cut > 0 and (raw[cut] & 0xC0) == 0x80:  # never split a UTF-8 sequence
            cut -= 1
        name = os.fsdecode(raw[:cut])
    return f".{name}.{secrets.token_hex(4)}.tmp"


def is_temp_name(name: str) -> bool:
    """True for the temp files :func:`atomic_write_bytes` makes (left behind only by a killed run)."""
    return bool(_TEMP_RE.match(name))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a hidden temp file in the target folder, fsync, then ``os.replace``.

    A reader (or a resumed run) sees either no file or the complete file, never a partial one.
    A target name longer than 255 bytes fails up front (``OSError`` ENAMETOOLONG), before any write.
    """
    path = Path(path)
    if len(os.fsencode(path.name)) > NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, f"file name longer than {NAME_MAX} bytes", str(path))
    tmp = path.with_name(temp_name(path.name))
    batch: Staged | None = getattr(_local, "batch", None)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            if batch is None:
                os.fsync(fh.fileno())
        if tmp.stat().st_size != len(data):
            raise OSError(28, "short write (disk full?)", str(tmp))
        if batch is not None:
            batch.files.append((tmp, path))
            return
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def atomic_symlink(target: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put a symbolic link to ``target`` at ``path`` atomically (a temp link, then ``os.replace``);
    staged like :func:`atomic_write_bytes` inside :func:`staging`, so that it keeps its place in order
    among the staged writes."""
    path = Path(path)
    tmp = path.with_name(temp_name(path.name))
    os.symlink(target, tmp)
    batch: Staged | None = getattr(_local, "batch", None)
    if batch is not None:
        batch.files.append((tmp, path))
        return
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically; a path from a non-UTF-8 file name (``os.fsdecode`` surrogates) keeps
    its original bytes."""
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


# ---------------------------------------------------------------- group commit


@functools.cache
def _syncfs():
    """libc's ``syncfs(fd)`` (Linux), or None; looked up on first use, in this process's own symbols."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn


_local = threading.local()


class Staged:
    """Files written (temp names, not synced) and waiting for :meth:`commit`: ``files`` is
    (temp, final path) in write order. Used by one thread at a time."""

    def __init__(self) -> None:
        self.files: list[tuple[Path, Path]] = []

    def commit(self) -> None:
        """Make every staged file durable (one ``syncfs`` per file system), then rename each into
        place, in order. On an error every temp not yet renamed is removed, and the error raised."""
        files, self.files = self.files, []
        done = 0
        try:
            if files:
                _barrier([tmp for tmp, _ in files])
            for tmp, path in files:
                os.replace(tmp, path)
                done += 1
        except BaseException:
            for tmp, _ in files[done:]:
                try:
                    tmp.unlink()
                except OSError:
                    pass
            raise

    def discard(self) -> None:
        """Remove every staged temp (nothing of it becomes visible)."""
        files, self.files = self.files, []
        for tmp, _ in files:
            try:
                tmp.unlink()
            except OSError:
                pass


def _barrier(paths: list[Path]) -> None:
    """Everything written to the file systems holding ``paths`` is on disk (``syncfs`` each)."""
    syncfs = _syncfs()
    assert syncfs is not None  # staging is only turned on where syncfs exists
    seen: set[int] = set()
    for p in paths:
        folder = os.path.dirname(p) or "."  # the folder: a staged temp may be a symbolic link
        dev = os.stat(folder).st_dev
        if dev in seen:
            continue
        seen.add(dev)
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            if syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(p))
        finally:
            os.close(fd)


def can_stage() -> bool:
    """Whether group commit is available here (Linux's ``syncfs``)."""
    return _syncfs() is not None


@contextmanager
def staging(batch: Staged | None) -> Iterator[None]:
    """Within the block, this thread's :func:`atomic_write_bytes` calls stage into ``batch`` (None,
    or no ``syncfs`` here: each write syncs and renames itself, as outside the block)."""
    before = getattr(_local, "batch", None)
    _local.batch = batch if can_stage() else None
    try:
        yield
    finally:
        _local.batch = before
