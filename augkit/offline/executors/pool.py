"""The local executor's process pool: started in the background, fed in chunks, never a hang.

``concurrent.futures.ProcessPoolExecutor`` rather than ``multiprocessing.Pool``: when a worker
process dies (killed, out of memory, a crash in a native library) it marks the pool broken and
every waiting future raises, where ``Pool`` would wait forever for the lost results.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from augkit.offline.executors.result import ItemResult, failure

_TASK = None  # the task object of this worker process


def _init(task, parent: int) -> None:
    global _TASK
    import cv2  # deferred: the executor itself needs no OpenCV; a worker only pins its threads

    cv2.setNumThreads(1)  # one OpenCV thread per worker: no oversubscription
    threading.Thread(target=_exit_with, args=(parent,), name="augkit-parent-watch", daemon=True).start()
    _TASK = task
    _TASK.setup()


def _exit_with(parent: int) -> None:
    """End this worker when the run's process is gone (killed with -9): a worker of a fork server
    is not the run's child, nothing else would end it, and it keeps the fork server alive too."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass  # alive, another user's pid: cannot happen for our parent, keep watching


def _ping() -> bool:
    return True


def call_safely(task, item) -> ItemResult:
    """Run one item; any exception is a per-item ``failed`` result, never a crash or a hang."""
    try:
        return task(item)
    except Exception as exc:  # noqa: BLE001 - reported per file, the run goes on
        return failure(item, "worker error", exc)


def _call_chunk(items: list) -> list[ItemResult]:
    """One chunk in this worker: through the task's own ``run_chunk`` when it has one (it may
    overlap the items' I/O; it must return one result per item, in order, and never raise)."""
    chunked = getattr(_TASK, "run_chunk", None)
    if chunked is not None:
        return chunked(items)
    return [call_safely(_TASK, it) for it in items]


def warm_fork_server(ctx, preload: tuple[str, ...]) -> None:
    """Start the fork server now, without waiting: it imports ``preload`` in the background, so a
    pool asked for later starts sooner. Nothing to do for other start methods."""
    if ctx.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver  # deferred: only this start method has one

    ctx.set_forkserver_preload(list(preload))
    with sigint_ignored():
        forkserver.ensure_running()


@contextlib.contextmanager
def sigint_ignored():
    """SIGINT ignored while the fork server is spawned: the server, and every worker it forks,
    inherit the ignored signal (Python keeps a SIGINT ignored at its start ignored). A Ctrl-C
    reaches the whole process group; the server imports OpenCV and albumentations for ~1.7 s and
    printed a KeyboardInterrupt traceback when one came then. The run's own process handles
    Ctrl-C and ends the pool (a Ctrl-C during the spawn itself, a few milliseconds, is lost).
    Only the main thread may change signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


class PoolStarter:
    """Starts a pool of ``workers`` processes in a background thread (creating the workers blocks
    until the fork server has imported ``task.preload``), so the caller keeps working meanwhile."""

    def __init__(self, ctx, workers: int, task):
        self.ctx, self.workers, self.task = ctx, workers, task
        self.pool: ProcessPoolExecutor | None = None
        self._ping: Future | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is None:
            # the fork server is spawned here, in the caller's (main) thread, with SIGINT ignored
            warm_fork_server(self.ctx, tuple(getattr(self.task, "preload", ())))
            self._thread = threading.Thread(target=self._start, name="augkit-pool-start", daemon=True)
            self._thread.start()

    def _start(self) -> None:
        try:
            if self.ctx.get_start_method() == "forkserver":  # (an empty list: not the default ['__main__'])
                self.ctx.set_forkserver_preload(list(getattr(self.task, "preload", ())))
            self.pool = ProcessPoolExecutor(
                self.workers, mp_context=self.ctx, initializer=_init, initargs=(self.task, os.getpid())
            )
            self._ping = self.pool.submit(_ping)  # done once a worker has run its setup
        except BaseException as exc:  # noqa: BLE001 - wait() then returns None: the work runs in-process
            self._error = exc

    def ready(self) -> bool:
        """A worker is up (or the start failed: then :meth:`wait` says so)."""
        if self._thread is None or self._thread.is_alive():
            return False
        return self._error is not None or self._ping is None or self._ping.done()

    def wait(self) -> ProcessPoolExecutor | None:
        """The pool, once a worker is up; None when it could not start, e.g. the task's setup fails
        in a worker (the caller runs in-process)."""
        self.start()
        assert self._thread is not None  # start() made it
        self._thread.join()
        try:
            if self._ping is not None:
                self._ping.result()
        except Exception:  # noqa: BLE001 - BrokenProcessPool: the workers die in their setup
            self.close()
        return self.pool

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self.pool is not None:
            if getattr(self.pool, "_broken", False):
                # Python 3.11 leaves the other workers of a broken pool blocked on its queue forever.
                for proc in list((getattr(self.pool, "_processes", None) or {}).values()):
                    proc.terminate()
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def make_chunks(items: list, size: int, key: Callable[[object], object] | None = None) -> list[list]:
    """Consecutive items in chunks of ``size``; with ``key``, a chunk grows past ``size`` to the end
    of its run of equal keys (e.g. the copies of one source image, so one worker decodes it once),
    up to twice ``size``: a longer run is split, so the workers still share the work."""
    if key is None or size == 1:
        return [items[i : i + size] for i in range(0, len(items), size)]
    chunks: list[list] = []
    cur: list = []
    for it in items:
        if cur and (len(cur) >= 2 * size or (len(cur) >= size and key(it) != key(cur[-1]))):
            chunks.append(cur)
            cur = []
        cur.append(it)
    if cur:
        chunks.append(cur)
    return chunks


def run_in_pool(
    pool: ProcessPoolExecutor,
    items: list,
    workers: int,
    suspects: list,
    unsent: list,
    window: int | None = None,
    key: Callable[[object], object] | None = None,
) -> Iterator[ItemResult]:
    """Feed ``items`` to the pool in chunks (``window`` chunks in flight, default two per worker;
    ``key``: see :func:`make_chunks`) and yield results as they come.

    When the pool breaks (a worker died), stop: the items that were in flight are added to
    ``suspects`` (one of them killed the worker; the others are innocent) and those never sent to
    ``unsent``; the caller decides what to do with them."""
    chunks = make_chunks(items, 1 if window == 1 else max(1, min(8, len(items) // (workers * 4))), key)
    pending: dict[Future, list] = {}
    nxt = 0
    while nxt < len(chunks) or pending:
        while nxt < len(chunks) and len(pending) < (window or 2 * workers):
            try:
                pending[pool.submit(_call_chunk, chunks[nxt])] = chunks[nxt]
            except RuntimeError:  # BrokenProcessPool, or shut down: nothing more goes in
                break
            nxt += 1
        if not pending:
            break
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        broken = False
        for fut in done:
            batch = pending.pop(fut)
            try:
                yield from fut.result()
            except BrokenProcessPool:
                broken = True
                suspects.extend(batch)
            except Exception as exc:  # noqa: BLE001 - e.g. an item that does not pickle
                yield from (failure(it, "worker error", exc) for it in batch)
        if broken:
            break
    for batch in pending.values():
        suspects.extend(batch)
    unsent.extend(it for c in chunks[nxt:] for it in c)
