"""Who waited: how much of an epoch the training step spent waiting for its data.

The question users ask first ("is my data pipeline the bottleneck?"), answered from the epoch itself:
:class:`FeedMeter` wraps the loader and times each ``next()``. The rest of the epoch is the step
(copy to the device, forward, backward, update; ``loss.item()`` synchronizes the device every step,
so wall times are the device's too). In training the meter wraps the DataLoader inside the
:class:`~augkit.training.prefetch.Prefetcher`, so the copy, normalization and mixing are never counted
as waiting for the loader: on CUDA they overlap the previous step on a side stream, and what the step
still waits for them is step time.

- ``data_wait``: the share of the epoch spent waiting for the next batch.
- ``model_img_s``: images per second of the step alone, what the model would do with free data.
- ``loader_img_s``: with loading in the training process (0 workers) every load is waited for, so
  it is images / waiting time. With worker processes loading overlaps the step and only its excess
  is seen; the loader's rate is then the epoch's rate when the step waited noticeably (the loader
  set the pace), and is at least the epoch's rate otherwise (``loader_at_least``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

#: the share of waiting above which the loader is called the bottleneck and advice is given
BOTTLENECK_SHARE = 0.3
#: below this share, worker loading is said to keep up (its rate is only known to be at least the epoch's)
KEEPS_UP_SHARE = 0.05


@dataclass
class FeedStats:
    images: int
    seconds: float
    wait_seconds: float
    workers: int

    @property
    def data_wait(self) -> float:
        return self.wait_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def model_img_s(self) -> float:
        busy = self.seconds - self.wait_seconds
        return self.images / busy if busy > 0 else float("inf")

    @property
    def loader_at_least(self) -> bool:
        """True when only a lower bound of the loader's rate is known (workers kept up)."""
        return self.workers > 0 and self.data_wait < KEEPS_UP_SHARE

    @property
    def loader_img_s(self) -> float:
        if self.workers == 0:
            return self.images / self.wait_seconds if self.wait_seconds > 0 else float("inf")
        return self.images / self.seconds if self.seconds > 0 else float("inf")

    def row(self) -> dict[str, Any]:
        """The columns metrics.csv gets for an epoch."""
        return {
            "data_wait": round(self.data_wait, 4),
            "loader_img_s": _rate(self.loader_img_s),
            "model_img_s": _rate(self.model_img_s),
        }


def _rate(v: float) -> float | str:
    return "" if v == float("inf") else round(v, 1)


class FeedMeter:
    """Wrap a loader (``for x, y in meter.iterate(loader)``) and read :meth:`stats` afterwards."""

    def __init__(self, workers: int = 0):
        self.workers = workers
        self.wait_seconds = 0.0
        self.images = 0
        self._start: float | None = None
        self._end: float | None = None

    def iterate(self, loader: Iterable[T]) -> Iterator[T]:
        self._start = time.perf_counter()
        it = iter(loader)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            finally:
                self.wait_seconds += time.perf_counter() - t
            self.images += _batch_len(batch)
            yield batch
        self._end = time.perf_counter()

    def stats(self) -> FeedStats:
        start = self._start if self._start is not None else time.perf_counter()
        end = self._end if self._end is not None else time.perf_counter()
        return FeedStats(self.images, end - start, self.wait_seconds, self.workers)


def _batch_len(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    shape = getattr(first, "shape", None)
    return int(shape[0]) if shape else 1


def combine(stats: list[FeedStats]) -> FeedStats | None:
    """The stats of several epochs as one (for the run's summary)."""
    if not stats:
        return None
    return FeedStats(
        sum(s.images for s in stats),
        sum(s.seconds for s in stats),
        sum(s.wait_seconds for s in stats),
        stats[-1].workers,
    )


def advice(
    stats: FeedStats, *, cache: bool = False, image_size: int | None = None, gpu_decode: bool = False
) -> str | None:
    """One line of advice when the loader is the bottleneck, else None. ``gpu_decode``: ``--decode gpu``
    is open to this run (training on CUDA, decoding on the CPU)."""
    if stats.data_wait < BOTTLENECK_SHARE:
        return None
    tips = [f"more --workers (now {stats.workers})"]
    if not cache:
        tips.append("--cache (decode each image once)")
    if gpu_decode:
        tips.append("--decode gpu (JPEGs decoded and warped on the GPU)")
    if image_size is not None and image_size > 64:
        tips.append("a smaller --image-size")
    return (
        f"the data loader is the bottleneck: the step waited for data {stats.data_wait:.0%} of the time "
        f"(loader {stats.loader_img_s:.0f} img/s, model {stats.model_img_s:.0f} img/s); try " + ", ".join(tips)
    )


def from_rows(rows: list[dict], workers: int) -> FeedStats | None:
    """The whole run's feed, from its metrics rows (``data_wait`` x ``seconds`` is each epoch's wait)."""
    timed = [r for r in rows if r.get("data_wait") is not None and r.get("seconds")]
    if not timed:
        return None
    return FeedStats(
        images=int(sum(r["images_per_s"] * r["seconds"] for r in timed)),
        seconds=sum(r["seconds"] for r in timed),
        wait_seconds=sum(r["data_wait"] * r["seconds"] for r in timed),
        workers=workers,
    )
