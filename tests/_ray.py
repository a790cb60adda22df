"""One small local Ray for the tests that need one: 2 CPUs, no dashboard, no ``~/.ray/auth_token``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest


@contextlib.contextmanager
def local_ray() -> Iterator[Any]:
    """The ``ray`` module with a local Ray running (one already running is reused and left running);
    skips the test when ``ray[data]`` is not installed."""
    try:  # pytest.importorskip, also for a broken or partial install (ray without its [data] extra)
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"ray[data] is not installed ({exc}): pip install -e '.[test]'")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", "disabled"))  # no ~/.ray/auth_token
        started = not ray.is_initialized()
        if started:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            yield ray
        finally:
            if started:
                ray.shutdown()
