"""Executors run a plan's work items. The parent passes work items (paths and seeds); workers
read, augment and write the files themselves and send back only small result records.

``LocalExecutor`` (the default) uses the calling process for one worker and a process pool
for more. An executor yields results as they finish, in any order; the plan's per-item
seeds make the outputs independent of that order and of the worker count.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from typing import Callable, Iterable, Iterator, Protocol

_TASK = None  # the task object of this worker process


class Task(Protocol):
    def setup(self) -> None: ...

    def __call__(self, item) -> dict: ...


class Executor(Protocol):
    def run(self, task: Task, items: list) -> Iterator[dict]: ...


def _init(task) -> None:
    global _TASK
    import cv2

    cv2.setNumThreads(1)  # one OpenCV thread per worker: no oversubscription, no fork deadlocks
    _TASK = task
    _TASK.setup()


def _call(item) -> dict:
    return _TASK(item)


class LocalExecutor:
    """Runs items in this process (``workers == 1``) or in a pool of ``workers`` processes."""

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or os.cpu_count() or 1)

    def run(self, task: Task, items: list) -> Iterator[dict]:
        if not items:
            return
        if self.workers == 1 or len(items) == 1:
            task.setup()
            for item in items:
                yield task(item)
            return
        # Not plain fork: a parent that already ran OpenCV (its thread pool) can deadlock forked
        # children. The fork server is a clean process that has imported augkit once; workers
        # fork from it quickly.
        if "forkserver" in mp.get_all_start_methods():
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["augkit.augment"])
        else:
            ctx = mp.get_context("spawn")
        n = min(self.workers, len(items))
        chunk = max(1, min(8, len(items) // (n * 8)))
        pool = ctx.Pool(n, initializer=_init, initargs=(task,))
        try:
            yield from pool.imap_unordered(_call, items, chunksize=chunk)
            pool.close()
        finally:
            pool.terminate()
            pool.join()


def _ray_executor(**kwargs) -> Executor:
    """``--engine ray`` (augkit/executors_ray.py), imported only when asked for: no Ray in ``import augkit``."""
    from .executors_ray import RayExecutor

    return RayExecutor(**kwargs)


ENGINES: dict[str, Callable[..., Executor]] = {"local": LocalExecutor, "ray": _ray_executor}


def get_executor(engine: str, **kwargs) -> Executor:
    if engine not in ENGINES:
        from .errors import UsageError

        raise UsageError(f"unknown engine {engine!r} (allowed: {', '.join(ENGINES)})")
    return ENGINES[engine](**kwargs)
