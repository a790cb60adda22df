"""What a worker sends back for one work item: a small dict with a typed status.

Kept in its own module (no imports) so executors, the pool and tasks share it without any of them
importing another: the executors produce only ``FAILED`` (the task raised or its worker died),
tasks produce the rest. A dict rather than a dataclass because it crosses process pools (pickle)
and Ray Data (JSON) unchanged; :class:`Status` is a ``str`` enum for the same reason, so
``res["status"] == "ok"`` holds on both sides of the wire (JSON brings back the plain string).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, TypedDict


class Status(str, Enum):
    """The outcome of one item, and what the run does with it."""

    OK = "ok"  # done: the output is written (or, for ``verify`` items, found identical)
    BAD = "bad"  # the input cannot be used (not an image, too large...): reported, the run goes on
    FAILED = "failed"  # the task raised or its worker died: reported, the run goes on
    EXISTS = "exists"  # an output is there that these settings did not make: kept, reported
    FATAL = "fatal"  # the output cannot be written (disk full, read-only): the run stops


class ItemResult(TypedDict, total=False):
    """One item's result. ``status`` and ``item`` always; ``reason``/``detail`` unless OK; the rest
    is the task's record (for augment: the manifest row's fields)."""

    status: Status
    item: Any
    reason: str
    detail: str
    transforms: list
    width: int
    height: int
    unchanged: bool
    redraws: int
    seconds: float
    verified: bool
    source: dict  # the source file as read: {"size", "mtime_ns", "blake2b"} (a re-run redoes stale outputs)
    # labelled datasets (augkit.offline.labelled): objects kept/clipped/dropped (an augmented copy),
    # the label format's record of the output (for its ``finish``), and whether an unchanged copy is
    # a symbolic link to the source (--link)
    objects: dict
    label_record: dict
    linked: bool


def failure(item: Any, reason: str, exc: BaseException) -> ItemResult:
    """The result of an item whose task raised: plain strings, so it always pickles."""
    detail = f"{type(exc).__name__}: {exc}"
    return {"status": Status.FAILED, "item": item, "reason": reason, "detail": detail[:500]}
