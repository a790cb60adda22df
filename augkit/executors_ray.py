"""``--engine ray``: run a plan's work items on a Ray cluster through Ray Data.

The parent turns the work items into plain dicts (``ray.data.from_items``); a pool of actors
(``map_batches`` with a callable class) builds the task once per actor and runs it on each
item of a batch. Workers read SRC and write DST *by path*, exactly as the local executor's
processes do, so on a multi-node cluster SRC and DST must be on storage that every node
mounts at the same path. Only small result records travel back to the parent, which turns
them into the same result dicts the local executor yields; ``run_plan`` then writes the
manifest, errors file and journal as usual. The same per-item seeds give byte-identical
outputs, and resume/skip-existing work unchanged.

Ray is an optional extra (``pip install "augkit[ray]"``); this module imports it only when
an executor is built, so ``import augkit`` never imports Ray.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Iterator

from .errors import UsageError
from .local_pool import call_safely

INSTALL_HINT = 'the ray engine needs Ray Data: pip install "augkit[ray]"'


def import_ray():
    """``ray`` and ``ray.data``, or a :class:`UsageError` that says how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray without the [data] extra lacks pyarrow etc.)
    except ImportError as exc:
        raise UsageError(f"{INSTALL_HINT} ({exc})") from None
    return ray


def _item_to_dict(item) -> dict:
    return asdict(item) if is_dataclass(item) else dict(item)


class _Worker:
    """One Ray Data actor: builds the task once, then runs it on every item of each batch."""

    def __init__(self, task, item_type: type) -> None:
        import cv2  # deferred: only actors need it

        cv2.setNumThreads(1)  # one OpenCV thread per actor: no oversubscription
        self.task = task
        self.task.setup()
        self.item_type = item_type  # the items' dataclass, pickled by reference from the parent

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        names = list(batch)
        n = len(batch[names[0]]) if names else 0
        out = []
        for i in range(n):
            item = self.item_type(**{k: _plain(batch[k][i]) for k in names})
            res = dict(call_safely(self.task, item))
            res["item"] = _item_to_dict(res["item"])
            out.append(json.dumps(res, ensure_ascii=False))
        return {"result": np.array(out, dtype=object)}


def _plain(v):
    """numpy scalars from a Ray batch back to Python's str/int/bool."""
    return v.item() if hasattr(v, "item") else v


class RayExecutor:
    """Runs items in a pool of Ray actors via Ray Data.

    address: ``None`` joins ``RAY_ADDRESS`` or a cluster already started on this node with
    ``ray start``, else starts a local Ray instance for this run; ``"auto"`` joins such a
    cluster or fails; ``"ray://host:10001"`` connects through Ray Client. A Ray already initialised in this process is reused as is and
    left running; one started here is shut down at the end.
    concurrency (alias: workers): actors in the pool (default: the cluster's CPU count).
    num_cpus: CPUs reserved per actor (default: 1, or a fraction when the pool would otherwise
    take every CPU of the cluster; Ray Data needs a little CPU left for its own tasks).
    batch_size: items per ``map_batches`` call, at most (smaller for small plans, so that each actor
    gets several batches). Ray's per-batch overhead is a few ms: on 2 CPUs batches of 8 ran at
    ~0.5x the local executor's rate, batches of 32 at about 1x.
    """

    def __init__(self, address: str | None = None, num_cpus: float | None = None, batch_size: int = 32,
                 concurrency: int | None = None, workers: int | None = None):
        import_ray()  # fail now, before any output is written, if the extra is missing
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        if num_cpus is not None and num_cpus <= 0:
            raise UsageError(f"num_cpus must be > 0, got {num_cpus}")
        n = concurrency or workers
        if n is not None and n < 1:
            raise UsageError(f"the number of Ray workers must be >= 1, got {n}")
        self.address, self.num_cpus, self.batch_size, self.concurrency = address, num_cpus, batch_size, n
        self.started = False  # whether the last run started (and stopped) Ray itself

    def _init(self, ray) -> bool:
        if ray.is_initialized():
            return False
        try:
            ray.init(address=self.address or None, ignore_reinit_error=True, logging_level=logging.WARNING)
        except (ConnectionError, ValueError) as exc:  # nothing there / a malformed address
            raise UsageError(f"cannot connect to the Ray cluster at {self.address or os.environ.get('RAY_ADDRESS')}: "
                             f"{exc}") from None
        return True

    def _pool(self, ray, n_items: int) -> tuple[int, float]:
        total = float(ray.cluster_resources().get("CPU", 1.0))
        n = self.concurrency or max(1, int(total))
        n = max(1, min(n, n_items))
        cpus = self.num_cpus
        if cpus is None:
            # n actors with 1 CPU each on an n-CPU cluster leave none for Ray Data's own tasks and
            # can hang (seen on 2 CPUs): take a fraction so that a little stays free.
            cpus = min(1.0, max(0.05, (total - 0.5) / n))
        return n, cpus

    def run(self, task, items: list) -> Iterator[dict]:
        if not items:
            return
        ray = import_ray()
        item_type = type(items[0])  # executors know only a task and its items (plain dataclasses)
        task = _absolute(task)  # actors may run in another working folder, or on another node
        self.started = self._init(ray)
        data_ctx = ray.data.DataContext.get_current()
        saved = (data_ctx.enable_progress_bars, data_ctx.print_on_execution_start)
        data_log = logging.getLogger("ray.data")
        saved_level = data_log.level
        try:
            data_ctx.enable_progress_bars = False  # augkit's own progress bar counts the results
            data_ctx.print_on_execution_start = False
            data_log.setLevel(logging.ERROR)  # no "progress bars disabled" / "execution finished" lines
            n, cpus = self._pool(ray, len(items))
            batch = max(1, min(self.batch_size, math.ceil(len(items) / (4 * n))))
            blocks = max(1, math.ceil(len(items) / batch))
            ds = ray.data.from_items([_item_to_dict(it) for it in items], override_num_blocks=blocks)
            ds = ds.map_batches(_Worker, fn_constructor_args=(task, item_type), batch_size=batch, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=n), num_cpus=cpus, zero_copy_batch=False)
            names = {f.name for f in fields(item_type)}
            for row in ds.iter_rows():
                res = json.loads(row["result"])
                res["item"] = item_type(**{k: v for k, v in res["item"].items() if k in names})
                yield res
        finally:
            data_ctx.enable_progress_bars, data_ctx.print_on_execution_start = saved
            data_log.setLevel(saved_level)
            if self.started:
                ray.shutdown()


def _absolute(task):
    """A copy of the task whose SRC/DST are absolute paths (workers do not share our cwd)."""
    if not (hasattr(task, "src") and hasattr(task, "dst")):
        return task
    task = copy.copy(task)
    task.src, task.dst = Path(task.src).resolve(), Path(task.dst).resolve()
    return task

