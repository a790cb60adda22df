"""``--engine ray``: run a plan's work items on a Ray cluster through Ray Data.

The parent turns the work items into plain dicts (``ray.data.from_items``); a pool of actors
(``map_batches`` with a callable class) builds the task once per actor and runs it on each
item of a batch. Workers read SRC and write DST *by path*, exactly as the local executor's
processes do, so on a multi-node cluster SRC and DST must be on storage that every node
mounts at the same path. Only small result records travel back to the parent, which turns
them into the same result dicts the local executor yields; ``run_plan`` then writes the
manifest, errors file and journal as usual. The same per-item seeds give byte-identical
outputs, and resume/skip-existing work unchanged.

Ray is an optional extra (``pip install "augkit[ray]"``); :mod:`augkit.ray_session` imports it
only when an executor is built or runs, so ``import augkit`` never imports Ray.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

from augkit.offline.executors.pool import call_safely
from augkit.offline.executors.result import ItemResult
from augkit.ray_session import check_pool_options, import_ray, ray_session


def _item_to_dict(item) -> dict:
    return asdict(item) if is_dataclass(item) and not isinstance(item, type) else dict(item)


class _Worker:
    """One Ray Data actor: builds the task once, then runs it on every item of each batch."""

    def __init__(self, task, item_type: type) -> None:
        import cv2  # deferred: the executor itself needs no OpenCV; an actor only pins its threads

        cv2.setNumThreads(1)  # one OpenCV thread per actor: no oversubscription
        self.task = task
        self.task.setup()
        self.item_type = item_type  # the items' dataclass, pickled by reference from the parent

    def __call__(self, batch: dict) -> dict:
        names = list(batch)
        n = len(batch[names[0]]) if names else 0
        out = []
        for i in range(n):
            item = self.item_type(**{k: _plain(batch[k][i]) for k in names})
            res = dict(call_safely(self.task, item))
            res["item"] = _item_to_dict(res["item"])
            out.append(json.dumps(res, ensure_ascii=False))
        import numpy as np  # deferred: Ray Data batches are numpy; the local engine needs none of it

        return {"result": np.array(out, dtype=object)}


def _plain(v):
    """numpy scalars from a Ray batch back to Python's str/int/bool."""
    return v.item() if hasattr(v, "item") else v


class RayExecutor:
    """Runs items in a pool of Ray actors via Ray Data.

    address: where Ray is (see :func:`augkit.ray_session.ray_session`: ``None`` joins ``RAY_ADDRESS``
    or a cluster on this node, else starts a local Ray for this run; ``"auto"``;
    ``"ray://host:10001"``). A Ray already initialised in this process is reused as is and left
    running; one started here is shut down at the end.
    concurrency (alias: workers): actors in the pool (default: the cluster's CPU count).
    num_cpus: CPUs reserved per actor (default: 1, or a fraction when the pool would otherwise
    take every CPU of the cluster; Ray Data needs a little CPU left for its own tasks).
    batch_size: items per ``map_batches`` call, at most (smaller for small plans, so that each actor
    gets several batches; Ray's per-batch overhead makes tiny batches slow: benchmarks/README.md).
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus: float | None = None,
        batch_size: int = 32,
        concurrency: int | None = None,
        workers: int | None = None,
    ):
        import_ray()  # fail now, before any output is written, if the extra is missing
        n = concurrency or workers
        check_pool_options(batch_size=batch_size, num_cpus=num_cpus, workers=n)
        self.address, self.num_cpus, self.batch_size, self.concurrency = address, num_cpus, batch_size, n
        self.started = False  # whether the last run started (and stopped) Ray itself

    def run(self, task, items: list) -> Iterator[ItemResult]:
        if not items:
            return
        item_type = type(items[0])  # executors know only a task and its items (plain dataclasses)
        task = _absolute(task)  # actors may run in another working folder, or on another node
        with ray_session(self.address) as session:
            self.started = session.started
            pool = session.actor_pool(len(items), workers=self.concurrency, num_cpus=self.num_cpus)
            ds = session.map_batches(
                [_item_to_dict(it) for it in items], _Worker, (task, item_type), batch_size=self.batch_size, pool=pool
            )
            names = {f.name for f in fields(item_type)}
            for row in ds.iter_rows():
                res = json.loads(row["result"])
                res["item"] = item_type(**{k: v for k, v in res["item"].items() if k in names})
                yield res


def _absolute(task):
    """A copy of the task whose SRC/DST are absolute paths (workers do not share our cwd)."""
    if not (hasattr(task, "src") and hasattr(task, "dst")):
        return task
    task = copy.copy(task)
    task.src, task.dst = Path(task.src).resolve(), Path(task.dst).resolve()
    return task
