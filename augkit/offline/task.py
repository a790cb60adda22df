"""The worker side of ``augkit augment``: one work item in, one output file and a small record out.

Kept apart from :mod:`augkit.offline.run` (plans, resume, records) so that a worker imports only what
it uses: images, the recipe engine and albumentations (without torch), never the parent's
machinery. Every failure of an item becomes a result record naming the file and the reason; only
an output folder that cannot be written (disk full, read-only) is ``fatal`` for the run.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from augkit.errors import ImageError
from augkit.io.fileio import Staged, atomic_write_bytes, read_bytes, staging
from augkit.io.images import decode_image, encode_image, max_bytes_for
from augkit.limits import AUGMENT_PRELOAD, MAX_REDRAWS
from augkit.offline.executors.result import ItemResult, Status, failure
from augkit.recipe.api import Augmenter, parse_recipe
from augkit.seeding import derive_seed

NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems
#: Outputs written by the in-process run before one durability barrier (:class:`~augkit.io.fileio.Staged`):
#: a kill leaves at most this many finished outputs unrecorded (a resumed run verifies them)
STAGE_ITEMS = 16
#: Bytes of outputs waiting in the writer (to be written, or staged) at most: huge images commit sooner
STAGE_BYTES = 64 << 20


@dataclass(frozen=True)
class WorkItem:
    src: str  # path relative to SRC (posix)
    out: str  # path relative to DST (posix)
    cls: str
    copy: int  # copy index; -1 for a copy of the original
    seed: int  # the sample seed, derived from (seed, src, copy)
    verify: bool = False  # the output exists without a manifest row: keep it only if it is byte-identical


@dataclass(frozen=True)
class TaskSettings:
    """What a worker needs of the run's options (a small, stable thing to pickle)."""

    max_pixels: int | None
    max_side: int | None = None
    quality: int = 95
    require_change: bool = False


def source_record(st: os.stat_result | None, data: bytes) -> dict:
    """What the manifest keeps of a source: size and mtime (checked by a re-run: a changed source
    makes its outputs stale) and a content hash (blake2b-128, ~1 GB/s: far below a decode)."""
    return {
        "size": len(data),
        "mtime_ns": st.st_mtime_ns if st is not None else None,
        "blake2b": hashlib.blake2b(data, digest_size=16).hexdigest(),
    }


def redraw_seed(seed: int, attempt: int) -> int:
    """The seed of the ``attempt``-th redraw of a copy (0: the copy's own seed)."""
    return seed if attempt == 0 else derive_seed(seed, "require-change", attempt, salt="augment")


def _settled(result: ItemResult | Future, item: WorkItem) -> ItemResult:
    if not isinstance(result, Future):
        return result
    try:
        return result.result()
    except Exception as exc:  # noqa: BLE001 - a write that raised something other than OSError
        return failure(item, "worker error", exc)


def bad_item(item: WorkItem, reason: str, detail: str = "") -> ItemResult:
    """An input that is skipped and reported (its file and the reason); the run goes on."""
    return {"status": Status.BAD, "item": item, "reason": reason, "detail": detail[:500]}


def write_failed(item: WorkItem, out_path: Path, exc: OSError) -> ItemResult:
    """An output that could not be written: a name too long is this file's problem (reported, the
    run goes on); any other OS error (disk full, read-only) ends the run."""
    if exc.errno == errno.ENAMETOOLONG:
        return bad_item(item, "name too long", f"{out_path}: {exc.strerror}")
    return {
        "status": Status.FATAL,
        "item": item,
        "reason": "write failed",
        "detail": f"{exc.filename or out_path}: {exc.strerror or exc}",
    }


class _Group:
    """Writes staged together (``staged``) and, once asked for, their commit in the writer thread."""

    def __init__(self) -> None:
        self.staged = Staged()
        self.commit: Future | None = None


def _payload_size(payload: object) -> int:
    data = getattr(payload, "payload", payload)  # a labelled task's pending output holds its image bytes
    return len(data) if isinstance(data, (bytes, bytearray, memoryview)) else 0


class AugmentTask:
    """What a worker does with one item: read the SRC file, augment it with the item's seed,
    write the DST file. ``preload``: what the pool's fork server imports once for all workers."""

    preload: tuple[str, ...] = AUGMENT_PRELOAD

    def __init__(self, src: Path, dst: Path, recipe_text: str, recipe_source: str, settings: TaskSettings):
        self.src, self.dst = Path(src), Path(dst)
        self.recipe_text, self.recipe_source, self.settings = recipe_text, recipe_source, settings
        self._aug: Augmenter | None = None
        # (src, bytes, decoded image, source record) of the last source
        self._last: tuple[str, bytes, np.ndarray, dict] | None = None
        self._writer: ThreadPoolExecutor | None = None  # run_chunk's writer thread

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _aug=None, _last=None, _writer=None)  # workers build their own

    def setup(self) -> None:
        if self._aug is None:
            self._aug = parse_recipe(self.recipe_text, self.recipe_source).build()

    def _decoded(self, src: str, path: Path) -> tuple[bytes, np.ndarray]:
        """Decode once per source: the copies of one image are consecutive work items, so the
        last decoded image is reused (each executor hands a worker consecutive items in chunks).
        The source's record (:func:`source_record`) is kept beside it: :meth:`_source_record`."""
        last = self._last
        if last is not None and last[0] == src:
            return last[1], last[2]
        self._last = None
        s = self.settings
        try:
            st = os.stat(path)  # before the read: a change during the read shows as a newer mtime next time
        except OSError:
            st = None  # read_bytes names the reason
        data = read_bytes(path, max_bytes=max_bytes_for(s.max_pixels) if s.max_pixels else None)
        img = decode_image(data, path, max_pixels=s.max_pixels, max_side=s.max_side)
        record = source_record(st, data)
        self._last = (src, data, img, record)
        return data, img

    def _source_record(self, src: str) -> dict | None:
        """The record of the source :meth:`_decoded` read last, if it is ``src``."""
        last = self._last
        return last[3] if last is not None and last[0] == src else None

    def _augment(self, img: np.ndarray, seed: int) -> tuple[np.ndarray, list, int, bool]:
        """(image, applied steps, redraws, unchanged). A copy whose pixels equal its source's is
        redrawn under ``require_change``, from seeds derived from its own (bounded, reproducible)."""
        self.setup()
        assert self._aug is not None  # setup() built it
        tries = MAX_REDRAWS + 1 if self.settings.require_change else 1
        for attempt in range(tries):
            out, applied = self._aug(img.copy(), redraw_seed(seed, attempt))  # the cached image stays pristine
            unchanged = out.shape == img.shape and np.array_equal(out, img)
            if not unchanged:
                break
        return out, applied, attempt, unchanged

    @staticmethod
    def chunk_key(item: WorkItem) -> str:
        """The copies of one source go to one worker together: it decodes the source once."""
        return item.src

    def __call__(self, item: WorkItem) -> ItemResult:
        made = self._make(item)
        return self._write(*made) if isinstance(made, tuple) else made

    def run_chunk(self, items: list[WorkItem]) -> list[ItemResult]:
        """The items of one pool chunk, in order. Each file's write runs in a writer thread while the
        next item is decoded and augmented, and the chunk's files are made durable together (one
        barrier, then the renames: :class:`~augkit.io.fileio.Staged`). A result still comes back only
        once its file is in place, so the manifest never names a missing file."""
        return list(self.iter_items(items, ahead=len(items)))

    def iter_items(self, items: Iterable[WorkItem], ahead: int = STAGE_ITEMS) -> Iterator[ItemResult]:
        """The items' results in order, each once its files are in place, with at most ``ahead`` items
        (and :data:`STAGE_BYTES` of output) between being made and being in place: what
        :meth:`run_chunk` does for a chunk, and the local executor for the whole plan in its own
        process. Writes run in the writer thread while the next items are made; they are staged
        (written under temp names) and committed in groups: one durability barrier for the group,
        then the renames in order (group commit, :mod:`augkit.io.fileio`). When the oldest item is
        due, everything staged so far is committed. A failed barrier or rename fails each item of the
        group (``write failed``); an interrupted run leaves only temps, which a resumed run removes."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="augkit-writer")
        writer = self._writer
        pending: deque[tuple[ItemResult | Future, WorkItem, _Group | None, int]] = deque()
        group, waiting = _Group(), 0
        stop: BaseException | None = None
        try:
            try:
                for item in items:
                    try:
                        made = self._make(item)
                        if isinstance(made, tuple):
                            size = _payload_size(made[2])
                            job = writer.submit(self._staged_write, group.staged, made)
                            pending.append((job, item, group, size))
                            waiting += size
                        else:
                            pending.append((made, item, None, 0))
                    except Exception as exc:  # noqa: BLE001 - as the executors' call_safely: reported per file
                        pending.append((failure(item, "worker error", exc), item, None, 0))
                    while len(pending) > ahead or (waiting > STAGE_BYTES and len(pending) > 1):
                        if pending[0][2] is group:
                            group = _Group()  # the oldest is in the open group: commit it, open another
                        res, size = self._settle(writer, *pending.popleft())
                        waiting -= size
                        yield res
            except GeneratorExit:
                raise
            except BaseException as exc:  # noqa: BLE001 - interrupted (SIGTERM, Ctrl-C) while making an item:
                stop = exc  # what is made is committed and handed over first, then the interruption goes on
            group = _Group()
            while pending:
                yield self._settle(writer, *pending.popleft())[0]
            if stop is not None:
                raise stop
        finally:  # closed early (a fatal result ends the run): what was made but not committed is dropped
            for entry in pending:
                if isinstance(entry[0], Future):
                    entry[0].exception()  # every write has ended before any temp is removed
            for _, _, g, _ in pending:
                if g is not None and g.commit is None:
                    g.staged.discard()

    def _staged_write(self, staged: Staged, made: tuple) -> ItemResult:
        with staging(staged):
            return self._write(*made)

    def _settle(
        self, writer: ThreadPoolExecutor, res: ItemResult | Future, item: WorkItem, group: _Group | None, size: int
    ) -> tuple[ItemResult, int]:
        """The item's final result: its write's, once its group is committed (the commit is started
        now if it has not been)."""
        result = _settled(res, item)
        if group is None:
            return result, size
        if group.commit is None:
            group.commit = writer.submit(group.staged.commit)
        try:
            group.commit.result()
        except OSError as exc:
            if result.get("status") == Status.OK:
                result = write_failed(item, self.dst / item.out, exc)
        except Exception as exc:  # noqa: BLE001 - reported per file, as a write that raised
            if result.get("status") == Status.OK:
                result = failure(item, "worker error", exc)
        return result, size

    def _make(self, item: WorkItem) -> ItemResult | tuple[WorkItem, Path, bytes, ItemResult]:
        """Everything but the write: a finished result (bad input, verify) or what to write."""
        t0 = time.perf_counter()
        out_path = self.dst / item.out
        if len(os.fsencode(out_path.name)) > NAME_MAX:
            return bad_item(
                item,
                "name too long",
                f"output name {out_path.name!r} is "
                f"{len(os.fsencode(out_path.name))} bytes (limit {NAME_MAX}); rename the source",
            )
        try:
            data, img = self._decoded(item.src, self.src / item.src)
        except ImageError as exc:
            return bad_item(item, exc.reason, exc.detail)
        source = self._source_record(item.src)
        assert source is not None  # _decoded just read item.src and kept its record
        rec: ItemResult = {
            "status": Status.OK,
            "item": item,
            "transforms": [],
            "width": int(img.shape[1]),
            "height": int(img.shape[0]),
            "unchanged": False,
            "redraws": 0,
            "source": source,
        }
        if item.copy < 0:
            payload = data  # the original, byte for byte
        else:
            try:
                out, rec["transforms"], rec["redraws"], rec["unchanged"] = self._augment(img, item.seed)
            except Exception as exc:  # noqa: BLE001 - an op that fails on this image: report the file
                return bad_item(item, "augment failed", f"{type(exc).__name__}: {exc}")
            try:
                payload = encode_image(out, out_path.suffix, quality=self.settings.quality)
            except Exception as exc:  # noqa: BLE001 - ImageError or cv2.error (e.g. 2x20000 to webp)
                detail = f"{out.shape[1]}x{out.shape[0]} image to {out_path.suffix}"
                return bad_item(item, "encode failed", detail if isinstance(exc, ImageError) else f"{detail}: {exc}")
        if item.verify:
            return self._verify(item, out_path, payload, rec)
        done: ItemResult = {**rec, "seconds": time.perf_counter() - t0}
        return item, out_path, payload, done

    def _verify(self, item: WorkItem, out_path: Path, payload: bytes, rec: ItemResult) -> ItemResult:
        try:
            same = out_path.read_bytes() == payload
        except OSError:
            same = False
        if not same:
            return {"status": Status.EXISTS, "item": item}
        return {**rec, "verified": True}

    def _write(self, item: WorkItem, out_path: Path, payload: bytes, rec: ItemResult) -> ItemResult:
        try:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out_path, payload)
        except OSError as exc:
            return write_failed(item, out_path, exc)
        return rec
