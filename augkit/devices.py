"""One rule for ``--device`` and one rule for CPU threads in train, predict and evaluate."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from .errors import UsageError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; ``cpu``, ``cuda``, ``cuda:N``, ``mps`` must exist."""
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


def compute_threads(loader_workers: int, device: torch.device | str = "cpu") -> int:
    """Intra-op threads for the main process: the usable cores minus the busy loader workers, at
    least 1. torch's threads spin-wait, so threads + busy workers above the core count collapse
    throughput (measured here: 295 -> 11 img/s worst case). On a GPU the main process needs 1."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, usable_cores() - max(0, loader_workers))


@contextlib.contextmanager
def cpu_threads(loader_workers: int, device: torch.device | str = "cpu") -> Iterator[int]:
    """Run the block with :func:`compute_threads` intra-op threads, restoring the caller's setting."""
    before = torch.get_num_threads()
    n = compute_threads(loader_workers, device)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
