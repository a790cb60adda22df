"""One way to use Ray, shared by ``augment --engine ray`` and ``predict --engine ray``.

:func:`ray_session` joins a cluster (or starts a local Ray for the run), silences Ray Data's own
progress bars and banners (the CLI draws its own), and shuts Ray down afterwards only if it
started it. :meth:`RaySession.actor_pool` sizes a pool of actors from the cluster's resources and
:meth:`RaySession.map_batches` runs a callable class over records in that pool, in batches small
enough that every actor gets several.

Ray is an optional extra (``pip install "augkit[ray]"``): it is imported by :func:`import_ray`,
only when a session starts, so ``import augkit`` never imports Ray.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from augkit.errors import UsageError

INSTALL_HINT = 'the ray engine needs Ray Data: pip install "augkit[ray]"'


def import_ray() -> Any:
    """``ray`` and ``ray.data``, or a :class:`UsageError` that says how to install them."""
    try:
        import ray  # deferred: an optional extra, and ~1 s to import
        import ray.data  # noqa: F401  (ray without the [data] extra lacks pyarrow etc.)
    except ImportError as exc:
        raise UsageError(f"{INSTALL_HINT} ({exc})") from None
    return ray


def check_pool_options(*, batch_size: int, num_cpus: float | None, workers: int | None) -> None:
    """Reject impossible pool settings before any work (exit code 2 from the CLI)."""
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    if num_cpus is not None and num_cpus <= 0:
        raise UsageError(f"num_cpus must be > 0, got {num_cpus}")
    if workers is not None and workers < 1:
        raise UsageError(f"the number of Ray workers must be >= 1, got {workers}")


@dataclass(frozen=True)
class ActorPool:
    """How many actors, and what each reserves (``map_batches``' ``num_cpus``/``num_gpus``)."""

    size: int
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class RaySession:
    """A connected Ray; ``started``: whether this session started it (and will shut it down)."""

    ray: Any
    started: bool

    def actor_pool(
        self, n_items: int, *, workers: int | None = None, num_cpus: float | None = None, gpu: bool = False
    ) -> ActorPool:
        """Actors for ``n_items`` (never more actors than items).

        CPU: ``workers`` actors (default: the cluster's CPU count), each with ``num_cpus`` (default:
        1, or a fraction when n actors would take every CPU: n actors with 1 CPU each on an n-CPU
        cluster leave none for Ray Data's own tasks and can hang, seen on 2 CPUs).
        GPU: one GPU per actor, ``workers`` actors (default: the cluster's GPU count)."""
        resources = self.ray.cluster_resources()
        if gpu:
            n = max(1, min(workers or int(resources.get("GPU", 0)) or 1, n_items))
            return ActorPool(n, {"num_gpus": 1, "num_cpus": num_cpus or 1})
        total = float(resources.get("CPU", 1.0))
        n = max(1, min(workers or max(1, int(total)), n_items))
        cpus = num_cpus if num_cpus is not None else min(1.0, max(0.05, (total - 0.5) / n))
        return ActorPool(n, {"num_cpus": cpus})

    def gpus(self) -> float:
        """GPUs in the cluster (0 without any)."""
        return float(self.ray.cluster_resources().get("GPU", 0))

    def map_batches(self, records: list[dict], actor: type, args: tuple, *, batch_size: int, pool: ActorPool) -> Any:
        """A Ray Dataset of ``actor(*args)`` applied to ``records`` in numpy batches by ``pool``.

        Batches hold at most ``batch_size`` records, fewer for small inputs (about four batches per
        actor), one block per batch: Ray's per-batch overhead is a few ms, so batches must not be
        tiny (benchmarks/README.md, "Ray")."""
        ray = self.ray
        per_call = max(1, min(batch_size, math.ceil(len(records) / (4 * pool.size))))
        ds = ray.data.from_items(records, override_num_blocks=max(1, math.ceil(len(records) / per_call)))
        return ds.map_batches(
            actor,
            fn_constructor_args=args,
            batch_size=per_call,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=pool.size),
            zero_copy_batch=False,
            **pool.resources,
        )


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[RaySession]:
    """Ray for the block: joined or started, quiet, and shut down afterwards only if started here.

    address: ``None`` joins ``RAY_ADDRESS`` or a cluster already started on this node with
    ``ray start``, else starts a local Ray; ``"auto"`` joins such a cluster or fails;
    ``"ray://host:10001"`` connects through Ray Client. A Ray already initialised in this process
    is reused as is and left running. An unreachable or malformed address is a :class:`UsageError`."""
    ray = import_ray()
    started = _connect(ray, address)
    try:
        with _quiet_ray_data(ray):
            yield RaySession(ray, started)
    finally:
        if started:
            ray.shutdown()


def _connect(ray: Any, address: str | None) -> bool:
    """Initialise Ray unless it already is; whether this call started it."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address or None, ignore_reinit_error=True, logging_level=logging.WARNING)
    except (ConnectionError, ValueError) as exc:  # nothing there / a malformed address
        raise UsageError(
            f"cannot connect to the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: {exc}"
        ) from None
    return True


@contextlib.contextmanager
def _quiet_ray_data(ray: Any) -> Iterator[None]:
    """No Ray Data progress bars or start-up banners (the CLI draws its own), restored afterwards."""
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.print_on_execution_start)
    log = logging.getLogger("ray.data")
    level = log.level
    try:
        ctx.enable_progress_bars = ctx.print_on_execution_start = False
        log.setLevel(logging.ERROR)  # no "progress bars disabled" / "execution finished" lines
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved
        log.setLevel(level)
