"""What augkit does to its own processes (the ``augkit`` command, its pool workers), never to a
library user's process: :func:`setup` is called by ``augkit.cli.main`` and by the augment workers'
fork server (:mod:`augkit.offline.executors.preload`); DataLoader workers fork from the command and inherit it.

* albumentations is imported without ``huggingface_hub`` (:func:`augkit.albu.skip_hub_imports`).
* glibc's allocator keeps freed image buffers for reuse (:func:`keep_freed_buffers`).

Standard library only, so ``augkit --version`` stays instant.
"""

from __future__ import annotations

import os
import sys

#: Buffers below this size come from the heap, not from a fresh ``mmap`` each time (glibc's own
#: upper bound for its dynamic threshold, on 64-bit).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Freed memory at the top of the heap is returned to the system only above this.
TRIM_THRESHOLD = 128 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt() parameters, glibc's malloc.h


def setup() -> None:
    """Everything above, once per process (idempotent)."""
    from augkit.albu import skip_hub_imports

    skip_hub_imports()
    keep_freed_buffers()


def keep_freed_buffers() -> bool:
    """Make glibc reuse freed image-sized buffers instead of handing them back to the system. An
    image of 500x375 (0.56 MB) and each intermediate of a recipe is above glibc's default 128 KiB
    mmap threshold; glibc raises that threshold after the first free, but then returns the top of
    its heap to the system whenever more than twice that is free. Either way each buffer was
    faulted in afresh, page by page: 272 page faults per augmented output here (1.8 s of system
    time in 1,000 outputs), 19 with this (1.3 s). Costs at most TRIM_THRESHOLD of freed memory
    kept by the process. A no-op off glibc; True when applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False  # musl and others: another allocator
        import ctypes  # deferred: only glibc processes need it

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    except (OSError, ValueError, AttributeError):  # no libc.so.6 or no mallopt: keep the defaults
        return False
