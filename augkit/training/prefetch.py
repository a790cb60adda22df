"""The device never waits on a copy: each batch is copied to the device, normalized and mixed ahead of
the step that trains on it.

timm's ``PrefetchLoader`` design (``timm/data/loader.py``), written for augkit's batches. On CUDA,
while the model trains on batch ``k``, batch ``k + 1`` is already on its way on a *side stream*:

1. its uint8 pixels are copied host -> device (``non_blocking``: the DataLoader pinned them,
   ``pin_memory=True`` on cuda), its labels too;
2. the pixels are scaled to [0, 1] and normalized (ImageNet mean/std) there, in float32, and laid out
   ``channels_last`` when the run's precision says so;
3. the recipe's ``batch:`` section (mixup/cutmix, :class:`~augkit.training.mixing.BatchAugment`) mixes
   them there, its draws seeded from (seed, epoch, batch index) exactly as before.

Before the training (current) stream uses a batch it waits for the side stream (``wait_stream``: an
ordering on the device, the host does not block), and every tensor handed over is marked as used by
the training stream (``record_stream``): the caching allocator then does not give its memory to a
later side-stream batch until the training stream's work on it is done. timm's loader does the first
and not the second; without it a batch's memory can be reused while a kernel still reads it.
The side stream first waits for the training stream once per pass, so it never reads anything the
training stream has not finished writing.

On any other device (the CPU, mps) there is nothing to overlap: :class:`Prefetcher` is a pass-through
that prepares each batch when it is asked for, with the same arithmetic in the same order as augkit's
earlier training step (``model_input``, then the mix), so CPU runs give the same numbers as before.

Who waited (:mod:`augkit.training.feed`): the :class:`~augkit.training.feed.FeedMeter` wraps the
DataLoader *inside* the prefetcher, so ``data_wait`` is the time blocked on the loader alone. The
copy, normalization and mixing are step work: on the CPU they run in the step (as before), on CUDA
they overlap the previous step, and whatever the training stream still waits for them shows in the
step's time (``loss.item()`` synchronizes every step), never in the loader's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import torch

from augkit.io.preprocess import IMAGENET_MEAN, IMAGENET_STD
from augkit.training.mixing import BatchAugment


class DeviceBatch(NamedTuple):
    """A batch ready for the step, on the training device."""

    images: torch.Tensor  # float32, normalized (and mixed), channels_last when asked
    targets: torch.Tensor  # what the loss takes: class indices, or soft targets (N, K) when mixed
    labels: torch.Tensor  # class indices for accuracy (the dominant label of a mixed image)


def model_input(
    x: torch.Tensor,
    device: torch.device,
    channels_last: bool = False,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """A batch on ``device``; uint8 batches are scaled and normalized there (ImageNet mean/std).
    ``stats``: the (mean, std) tensors already on ``device``, (1, 3, 1, 1) each (made here when None)."""
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        mean, std = stats if stats is not None else norm_stats(device)
        x = (x.float().div_(255.0) - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def norm_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet (mean, std) on ``device``, shaped (1, 3, 1, 1) to broadcast over a batch."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return mean, std


class CudaStreams:
    """The two streams of a prefetch on CUDA: the side stream prepares the next batch while the
    training stream (the one current when the prefetcher was made) trains on this one."""

    def __init__(self, device: torch.device):
        self.main = torch.cuda.current_stream(device)
        self.side = torch.cuda.Stream(device=device)

    def begin(self) -> None:
        """Once per pass: the side stream starts after the work already queued on the training stream."""
        self.side.wait_stream(self.main)

    def preparing(self) -> contextlib.AbstractContextManager[Any]:
        """The context a batch is copied and prepared in: the side stream."""
        return torch.cuda.stream(self.side)

    def hand_over(self, tensors: Iterable[torch.Tensor]) -> None:
        """Before the training stream uses ``tensors`` (made on the side stream): it waits for the side
        stream, and each tensor is recorded as used by it (its memory is not reused before that work ends)."""
        self.main.wait_stream(self.side)
        seen: set[int] = set()
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                t.record_stream(self.main)


class Prefetcher:
    """Turn a loader's ``(images, labels)`` batches into :class:`DeviceBatch` objects on ``device``.

    ``prefetcher(batches)`` yields one :class:`DeviceBatch` per batch, in order; batch ``k`` is
    mixed as step ``k`` of ``epoch`` (``mix``: the recipe's ``batch:`` section, or None). On CUDA (or
    with ``streams`` given) the next batch is prepared on a side stream while the current one is used;
    elsewhere each batch is prepared when asked for. ``decode`` (``--decode gpu``): turns the loader's
    images (a batch of plans) into uint8 pixels on the device first, on the same stream. See the module docstring.
    """

    def __init__(
        self,
        device: torch.device,
        *,
        channels_last: bool = False,
        mix: BatchAugment | None = None,
        epoch: int = 0,
        streams: CudaStreams | None = None,
        decode: Callable[[Any, torch.device], torch.Tensor] | None = None,
    ):
        self.device = device
        self.decode = decode  # --decode gpu: makes a batch's pixels on the device (augkit.training.gpu_decode)
        self.channels_last = channels_last
        self.mix = mix
        self.epoch = epoch
        self.streams = streams if streams is not None else (CudaStreams(device) if device.type == "cuda" else None)
        self._stats: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def overlapped(self) -> bool:
        """Whether batches are prepared on a side stream, ahead of their step."""
        return self.streams is not None

    def prepare(self, batch: Any, step: int) -> DeviceBatch:
        """One loader batch on the device: copied, normalized, laid out and mixed as step ``step``."""
        x, y = batch[0], batch[1]
        if self.decode is not None:  # a batch of plans: decoded and augmented here, on this stream
            x = self.decode(x, self.device)
        if self._stats is None:  # made on the stream that uses them (the side stream on CUDA)
            self._stats = norm_stats(self.device)
        x = model_input(x, self.device, self.channels_last, self._stats)
        y = y.to(self.device, non_blocking=True)
        if self.mix is None:
            return DeviceBatch(x, y, y)
        # after normalization, as before (mixing is linear, so it commutes with it)
        x, target, _ = self.mix(x, y, epoch=self.epoch, step=step)
        return DeviceBatch(x, target, target.argmax(1))

    def __call__(self, batches: Iterable) -> Iterator[DeviceBatch]:
        streams = self.streams
        if streams is None:
            for step, batch in enumerate(batches):
                yield self.prepare(batch, step)
            return
        streams.begin()
        pending: DeviceBatch | None = None
        for step, batch in enumerate(batches):
            with streams.preparing():  # queued on the side stream: runs while `pending` trains
                ready = self.prepare(batch, step)
            if pending is not None:
                yield pending
            streams.hand_over(ready)
            pending = ready
        if pending is not None:
            yield pending


def describe_feed(device: torch.device, *, mixed: bool) -> str:
    """How batches reach ``device`` in training (settings.yaml): what :class:`Prefetcher` does there."""
    mix = ", mixed (the recipe's batch: section)" if mixed else ""
    if device.type == "cuda":
        return (
            "prefetched on a side CUDA stream: the next batch is copied (uint8, pinned, non_blocking), "
            f"normalized{mix} and laid out while the current one trains"
        )
    return f"on {device.type}: each batch normalized{mix} on the device in its own training step (nothing to overlap)"
