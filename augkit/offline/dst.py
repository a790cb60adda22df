"""The records an augment run keeps in its output folder, and the lock that guards them.

``DST/.augkit.lock``: held (``flock``) for the whole run, so two runs never share a DST (the
second is refused) and stale-temp cleanup never touches another run's files.
``DST/manifest.jsonl``: append-only history, one row per output written; a later row for the same
output supersedes an earlier one, no row is ever removed. ``DST/.augkit-journal.jsonl``: rows of the
running (or a killed) run, moved into the manifest at its end. ``DST/augkit-run.yaml``: ``runs``,
one entry per run (settings and recipe), appended. ``DST/errors.jsonl``: the last run's errors.

I/O failures here (disk full, read-only folder) become :class:`RecordError` with one line naming
the path and the OS error: the CLI prints it and exits 1, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType

import yaml

from augkit.errors import AugkitError, UsageError
from augkit.io.fileio import atomic_write_text, is_temp_name

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows: no flock; runs are then not guarded against each other
    fcntl = None

MANIFEST, ERRORS, RUNFILE, JOURNAL, LOCK = (
    "manifest.jsonl",
    "errors.jsonl",
    "augkit-run.yaml",
    ".augkit-journal.jsonl",
    ".augkit.lock",
)


class RecordError(AugkitError):
    """The output folder cannot be written (exit 1); the message names the path and the OS error."""


def io_error(what: str, path: str | os.PathLike, exc: OSError) -> RecordError:
    return RecordError(f"{what} {exc.filename or path}: {exc.strerror or exc}")


@contextlib.contextmanager
def locked(dst: Path, what: str = "DST") -> Iterator[None]:
    """Create DST and hold its lock for the block; a second run on the same DST gets a
    :class:`UsageError`. The lock file is removed at the end (so DST holds only outputs and
    records); a run that locked a file removed meanwhile tries again on the new one. A folder
    this call created and the block left empty is removed too. ``what`` names the folder in the
    message (``augkit train`` locks its RUN_DIR the same way)."""
    absent = [p for p in (dst, *dst.absolute().parents) if not p.exists()]  # the folders this call creates
    created = bool(absent)
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise io_error("cannot create the output folder", dst, exc) from None
    fd = _acquire(dst / LOCK, what)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(dst / LOCK)  # while still holding it: nobody else can be inside
            if created:  # only if empty: a run refused before writing leaves nothing behind,
                for folder in absent:  # its parents included (DST's own folder first, then up)
                    os.rmdir(folder)
        os.close(fd)  # closing releases the lock


def _acquire(path: Path, what: str = "DST") -> int:
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise io_error("cannot write to the output folder", path.parent, exc) from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(
                f"another augkit run is using {path.parent} (it holds {path}); "
                f"wait for it to finish or choose another {what}"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file as we locked it: lock the current one
    raise UsageError(f"could not lock {path}: another augkit run keeps replacing it")


def json_line(row: dict) -> str:
    """One JSON line. Readable UTF-8 for ordinary names; a name that is not valid UTF-8 (a 0xFF
    byte, kept by ``os.fsdecode`` as a lone surrogate) is written escaped (``\\udcff``), which
    ``json.loads`` turns back into the same name, so the path's bytes survive."""
    text = json.dumps(row, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(row, ensure_ascii=True)
    return text + "\n"


def read_rows(path: Path) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a torn last line from a killed run
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as exc:
        raise io_error("cannot read", path, exc) from None
    return rows


def latest_rows(dst: Path) -> dict[str, dict]:
    """The newest row of every output (manifest history, then the journal of a killed run)."""
    rows: dict[str, dict] = {}
    for r in read_rows(dst / MANIFEST) + read_rows(dst / JOURNAL):
        if isinstance(r, dict) and isinstance(r.get("output"), str):
            rows[r["output"]] = r
    return rows


def remove_stale_temps(folders: Iterable[Path]) -> None:
    """Temp files of a killed run are removed (call under :func:`locked`: no other run is writing)."""
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            if is_temp_name(e.name) and e.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(e.path)


def append_run(dst: Path, entry: dict) -> None:
    """Add this run to ``augkit-run.yaml``'s ``runs`` (a file from an older augkit becomes run 1)."""
    path = dst / RUNFILE
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        old = None  # unreadable: start the history again rather than fail the run
    runs = (
        old["runs"]
        if isinstance(old, dict) and isinstance(old.get("runs"), list)
        else ([old] if isinstance(old, dict) else [])
    )
    runs.append(entry)
    try:
        atomic_write_text(path, yaml.safe_dump({"runs": runs}, sort_keys=False, allow_unicode=True))
    except OSError as exc:
        raise io_error("cannot write", path, exc) from None


class Journal:
    """Rows of finished outputs, flushed one by one, so a killed run loses none of them."""

    def __init__(self, dst: Path):
        self.path = dst / JOURNAL
        try:
            self._fh = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise io_error("cannot write", self.path, exc) from None

    def append(self, row: dict) -> None:
        """Raises :class:`RecordError` (disk full, ...): the caller stops the run cleanly."""
        try:
            self._fh.write(json_line(row))
            self._fh.flush()
        except OSError as exc:
            raise io_error("cannot record progress in", self.path, exc) from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()


def _dump(rows: Iterable[dict]) -> str:
    return "".join(map(json_line, rows))


def finalize(dst: Path, new_rows: list[dict], errors: list[dict], order: Callable[[dict], int]) -> None:
    """Append the journal's and this run's rows (in plan order) to the manifest history, write the
    errors file, drop the journal. A journal row already recorded as an output's latest row (a
    run killed after its manifest write) is not appended twice."""
    history = read_rows(dst / MANIFEST)
    latest = {r.get("output"): r for r in history if isinstance(r, dict)}
    pending: dict[str, dict] = {}
    for r in read_rows(dst / JOURNAL) + new_rows:
        if isinstance(r, dict) and isinstance(r.get("output"), str):
            pending.pop(r["output"], None)
            pending[r["output"]] = r
    fresh = sorted((r for r in pending.values() if latest.get(r["output"]) != r), key=order)
    try:
        if fresh or not (dst / MANIFEST).exists():
            atomic_write_text(dst / MANIFEST, _dump(history + fresh))
        atomic_write_text(dst / ERRORS, _dump(errors))
        (dst / JOURNAL).unlink(missing_ok=True)
    except OSError as exc:
        # Disk full or read-only: the journal (if any) still lets the next run resume.
        raise io_error("cannot write", exc.filename or dst, exc) from None
