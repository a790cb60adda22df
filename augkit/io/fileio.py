"""Bounded, safe reads and atomic writes of whole files.

Reads never block and never run away: a FIFO, socket or device named ``x.jpg`` is refused
from ``os.stat`` before it is opened (opening a FIFO for reading waits for a writer forever;
``/dev/zero`` never ends), and a read stops after ``max_bytes + 1`` bytes even when the file
grows while it is read.

Writes are atomic: a hidden temp file ``.<name>.<hex8>.tmp`` in the target folder, fsync,
then ``os.replace``. Temp names always fit the 255-byte file name limit (the name part is
cut on a UTF-8 character boundary), so a long output name never stops a run at its temp.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
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
    """Write UTF-8 text atomically; a path from a non-UTF-8 file name (``os.fsdecode`` surrogates) keeps
    its original bytes."""
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))
