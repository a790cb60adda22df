"""Limits and defaults that help texts and start-up paths read before numpy or OpenCV are loaded
(this module imports nothing). Their meaning is documented where they are enforced."""

from __future__ import annotations

#: Images with more pixels are rejected from their header (:mod:`augkit.io.images`).
DEFAULT_MAX_PIXELS = 100_000_000
#: ``augment --require-change``: redraws of a copy in which no step changed a pixel (:mod:`augkit.offline.task`).
MAX_REDRAWS = 10
#: What the local pool's fork server imports once for every augment worker (:mod:`augkit.offline.executors.preload`).
AUGMENT_PRELOAD = ("augkit.offline.executors.preload", "augkit.offline.task")
