"""One rule each for ``--device``, CPU threads and default loader workers in train, predict and evaluate.

Imports torch only inside the functions that need it: :func:`default_workers` is read by
:mod:`augkit.training.config`, which builds ``augkit train --help`` without torch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from augkit.errors import UsageError

if TYPE_CHECKING:
    import torch

#: ``role`` of :func:`default_workers` -> its rule in words (help texts); the function is the rule.
WORKERS_RULES = {
    "train": "on a GPU, usable cores - 1 (at most 16); on CPU, 0 (load in the training process) "
    "with 2 cores or fewer, else cores / 4 (1 to 4)",
    "predict": "on a GPU, usable cores - 1 (at most 4); on CPU, cores / 4 (0 to 4)",
}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; ``cpu``, ``cuda``, ``cuda:N``, ``mps`` must exist."""
    import torch  # deferred: this module is imported where torch must not be (train_config)

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r} is not a device (e.g. auto, cpu, cuda, cuda:0, mps)") from None
    if dev.type == "cuda" and not cuda:
        raise UsageError(f"--device {name}: no CUDA device is available (torch.cuda.is_available() is False)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not mps:
        raise UsageError(f"--device {name}: no Apple MPS device is available")
    return dev


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity / container limits), not the machine's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def device_type(device: torch.device | str) -> str:
    """``cpu``, ``cuda``, ``mps``... of a device or its name (``cuda:1`` -> ``cuda``), without torch."""
    return str(getattr(device, "type", device)).split(":")[0]


def default_workers(device: torch.device | str, role: str = "train", cores: int | None = None) -> int:
    """Loader (decoding) workers when ``--workers`` is not given; ``cores`` defaults to :func:`usable_cores`.

    ============  ===========================================  =====================
    role          CPU                                          GPU (cuda, mps)
    ============  ===========================================  =====================
    ``train``     0 with 2 cores or fewer, else cores // 4,    cores - 1, at most 16
                  1 to 4
    ``predict``   cores // 4, at most 4 (0 below 4 cores)      cores - 1, at most 4
    ============  ===========================================  =====================

    On an accelerator the main process needs one core and the rest may load data: training
    consumes many more images per second than TTA inference (whose forward pass runs every view),
    hence the higher cap. On the CPU every busy worker takes a core from torch's threads
    (:func:`compute_threads`): on this project's 2-core machine a training epoch (500 digits,
    32 px, batch 64) took 2.0 s with 0 workers and 2 threads against 3.3 s with 1 worker and 1
    thread, and predict's forward pass (times the TTA views) outweighs decoding at reduced size,
    so small machines load in-process. The roles differ on CPU only at 3 cores (train 1,
    predict 0). Measured by ``benchmarks/bench_tta.py --workers-sweep`` for predict.
    """
    if role not in WORKERS_RULES:
        raise ValueError(f"role {role!r} is not one of {', '.join(WORKERS_RULES)}")
    n = usable_cores() if cores is None else cores
    if device_type(device) != "cpu":
        return max(0, min(16 if role == "train" else 4, n - 1))
    if role == "train":
        return 0 if n <= 2 else max(1, min(4, n // 4))
    return min(4, n // 4)


def compute_threads(loader_workers: int, device: torch.device | str = "cpu") -> int:
    """Intra-op threads for the main process: the usable cores minus the busy loader workers, at
    least 1. torch's threads spin-wait, so threads + busy workers above the core count collapse
    throughput (benchmarks/README.md has the figures). On a GPU the main process needs 1."""
    if device_type(device) != "cpu":
        return 1
    return max(1, usable_cores() - max(0, loader_workers))


@contextlib.contextmanager
def cpu_threads(loader_workers: int, device: torch.device | str = "cpu") -> Iterator[int]:
    """Run the block with :func:`compute_threads` intra-op threads, restoring the caller's setting."""
    import torch  # deferred: see the module docstring

    before = torch.get_num_threads()
    n = compute_threads(loader_workers, device)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
