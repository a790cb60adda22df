"""Executors run a task on a list of items. They know only the :class:`Task` protocol: the
task does the work for one item and returns a small, picklable result dict that names the item
(:class:`~augkit.offline.executors.result.ItemResult`, with a :class:`~augkit.offline.executors.result.Status`);
what an item *is* (paths, seeds) is the task's business.

``LocalExecutor`` (the default) runs in this process and, when the work left would repay it, in
a process pool started meanwhile (see :class:`LocalExecutor`). An executor yields results as they
finish, in any order; a task whose results depend only on the item (per-item seeds) gives the same
outputs whichever process ran it.

A worker failure never hangs the parent: the task is called through :func:`call_safely`, so any
exception becomes a ``failed`` result naming the item, and a worker process that dies is detected
(``concurrent.futures`` marks the pool broken): the items it had in flight are retried one by one
in a one-worker pool, so only the item that kills a worker is reported ("worker crashed"), and the
rest goes on in a fresh pool.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from augkit.errors import UsageError
from augkit.offline.executors.pool import PoolStarter, call_safely, run_in_pool, warm_fork_server
from augkit.offline.executors.ray import RayExecutor
from augkit.offline.executors.result import ItemResult, failure

#: Seconds of remaining in-process work above which a pool is started. Starting one takes S ~ 0.7 s
#: here (fork server and its imports, then a worker's setup). The parent keeps working meanwhile,
#: so W seconds of work end at S + (W - S) / n with n workers instead of W: the pool pays once
#: W > S; the margin covers a busy machine.
POOL_PAYOFF_S = 1.0
#: Plans with at least this many items start the pool's fork server (not its workers) up front:
#: its imports (~0.7 s of one core) then overlap the resume check and the first items.
WARM_ITEMS = 500
_MEASURE_ITEMS = 3  # items timed in-process before the first decision (then it is made again after each item)


class Task(Protocol):
    """What executors run. ``preload``: modules the fork server imports once for every worker.
    A task may also have ``run_chunk(items) -> list[ItemResult]`` (one result per item, in order,
    never raising): the pool's workers then hand it whole chunks, e.g. to overlap their I/O; and
    ``chunk_key(item)``: consecutive items with equal keys are kept in one chunk where possible
    (:func:`~augkit.offline.executors.pool.make_chunks`), e.g. to read a shared input once."""

    preload: tuple[str, ...]

    def setup(self) -> None: ...

    def __call__(self, item) -> ItemResult: ...


class Executor(Protocol):
    def run(self, task: Task, items: list) -> Iterator[ItemResult]: ...


def pool_context():
    """A fork server, never plain fork: a parent that already ran OpenCV (its thread pool) can
    deadlock forked children. Spawn where there is no fork server (Windows, macOS without it)."""
    if "forkserver" in mp.get_all_start_methods():
        return mp.get_context("forkserver")
    return mp.get_context("spawn")


class LocalExecutor:
    """Runs items in this process, and in a pool of ``workers`` processes when that pays.

    ``adaptive`` (default): the first items run in-process and are timed; when the work left
    (items left x measured time per item) exceeds ``payoff_s`` a pool is started in the
    background while this process keeps working, and the remaining items go to the pool once it
    is up. Small plans never start a pool. ``adaptive=False`` always uses a pool for
    ``workers > 1``. ``stats`` counts the items each side ran (for tests and benchmarks).
    """

    def __init__(self, workers: int | None = None, *, adaptive: bool = True, payoff_s: float = POOL_PAYOFF_S):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.adaptive, self.payoff_s = adaptive, payoff_s
        self.stats = {"in_process": 0, "pool": 0}
        self._starters: list[PoolStarter] = []

    def prepare(self, preload: tuple[str, ...], n_items: int) -> None:
        """Warm the fork server (importing ``preload``, a task's) for plans of ``n_items`` large
        enough to need a pool; called as early as the size is known. Returns at once."""
        if self.workers > 1 and n_items >= WARM_ITEMS:
            warm_fork_server(pool_context(), tuple(preload))

    def run(self, task: Task, items: list) -> Iterator[ItemResult]:
        self.stats = {"in_process": 0, "pool": 0}
        if not items:
            return
        if self.workers == 1 or len(items) == 1:
            yield from self._in_process(task, items)
            return
        starter = PoolStarter(pool_context(), min(self.workers, len(items)), task)
        self._starters = [starter]
        try:
            if self.adaptive:
                yield from self._adaptive(task, items, starter)
            else:
                yield from self._pool(starter, items)
        finally:
            for s in self._starters:
                s.close()

    def _in_process(self, task: Task, items: list) -> Iterator[ItemResult]:
        """The items here, in order: through the task's ``iter_items`` when it has one (each file's
        write, fsync included, overlaps the next item's work, as in a pool worker; a result comes
        as soon as its file is in place), else one by one."""
        task.setup()
        pipelined = getattr(task, "iter_items", None)
        for res in pipelined(items) if pipelined is not None else (call_safely(task, it) for it in items):
            self.stats["in_process"] += 1
            yield res

    def _adaptive(self, task: Task, items: list, starter: PoolStarter) -> Iterator[ItemResult]:
        """Items here until the pool is up (started once the measured work left repays it), the rest
        in the pool. A task with ``iter_items`` is fed lazily through it (writes overlap the next
        item and are committed in groups, as in :meth:`_in_process`); the feed stops once the pool
        is ready, and what it already took is finished here."""
        task.setup()
        times: list[float] = []
        taken = 0

        def measured(seconds: float) -> None:
            times.append(seconds)
            if not starter.started and len(times) > _MEASURE_ITEMS:
                per_item = sum(times[1:]) / (len(times) - 1)  # the first pays for warm-up; copies share decodes
                if per_item * (len(items) - taken) > self.payoff_s:
                    starter.start()

        def feed() -> Iterator:
            nonlocal taken
            last = None
            while taken < len(items) and not starter.ready():
                now = time.perf_counter()
                if last is not None:
                    measured(now - last)  # one item's work (its write overlaps the next)
                last = now
                taken += 1
                yield items[taken - 1]

        pipelined = getattr(task, "iter_items", None)
        if pipelined is not None:
            for res in pipelined(feed()):
                self.stats["in_process"] += 1
                yield res
        else:
            while taken < len(items) and not starter.ready():
                t0 = time.perf_counter()
                res = call_safely(task, items[taken])
                taken += 1
                self.stats["in_process"] += 1
                yield res
                measured(time.perf_counter() - t0)
        if taken < len(items):
            yield from self._pool(starter, items[taken:])

    def _pool(self, starter: PoolStarter, items: list) -> Iterator[ItemResult]:
        """Run ``items`` in the pool. When a worker dies, each item it may have been running is
        retried alone in a one-worker pool (so only the item that kills a worker is reported,
        "worker crashed"), and the items not yet sent go on in a fresh pool."""
        while items:
            pool = starter.wait()
            if pool is None:  # the pool could not start: the work still gets done, here
                yield from self._in_process(starter.task, items)
                return
            suspects: list = []
            unsent: list = []
            for res in run_in_pool(
                pool, items, starter.workers, suspects, unsent, key=getattr(starter.task, "chunk_key", None)
            ):
                self.stats["pool"] += 1
                yield res
            starter.close()
            for item in suspects:
                yield self._alone(starter.task, item)
            items = unsent
            if items:
                starter = self._restart(starter)

    def _restart(self, old: PoolStarter) -> PoolStarter:
        new = PoolStarter(old.ctx, old.workers, old.task)
        new.start()
        self._starters.append(new)
        return new

    def _alone(self, task: Task, item) -> ItemResult:
        starter = PoolStarter(pool_context(), 1, task)
        try:
            suspects: list = []
            pool = starter.wait()
            if pool is None:  # no worker starts any more: no isolation left, run it here
                return next(self._in_process(task, [item]))
            results = list(run_in_pool(pool, [item], 1, suspects, [], window=1))
            self.stats["pool"] += 1
            return (
                results[0]
                if results
                else failure(
                    item,
                    "worker crashed",
                    RuntimeError(
                        "the worker process died while working on this item (killed, out of memory or a crash)"
                    ),
                )
            )
        finally:
            starter.close()


#: name -> executor class (``--engine``). ``ray`` imports Ray only when an executor is built
#: (:mod:`augkit.ray_session`), so ``import augkit`` never imports it.
ENGINES: dict[str, Callable[..., Executor]] = {"local": LocalExecutor, "ray": RayExecutor}


def get_executor(engine: str, **kwargs) -> Executor:
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r} (allowed: {', '.join(ENGINES)})")
    return ENGINES[engine](**kwargs)
