"""Batch-level augmentation: mixup and cutmix on a batch of images, with soft targets.

Every random draw of a batch (whether it is mixed, mixup or cutmix, lambda, the cutmix box)
comes from a generator seeded with ``derive_seed(seed, "batch:<step>", epoch)``: never from
torch's or numpy's global RNG, so the same seed gives the same training at any worker count,
on any device. Images are paired with the batch rolled by one (image i with image i-1, as
torchvision's ``v2.MixUp``/``v2.CutMix``), so no image is mixed with itself when the batch has two or more.

Compared with timm's ``Mixup`` (mode ``batch``, ``correct_lam=True``), checked by tests/test_batchaug.py:

* the same lambda draw (Beta(alpha, alpha)), the same cutmix box (side ``int(side * sqrt(1 - lam))``,
  centre uniform, ``cut // 2`` before and ``(cut + 1) // 2`` after it, clipped to the image) and the
  same lambda correction (1 - box area / image area), pixels and targets mixed with the same arithmetic:
  a batch of two gives timm's result exactly for the same lambda and box centre;
* pairing: timm pairs image i with image N-1-i (``flip(0)``), augkit with i-1 (``roll(1)``, as
  torchvision). Same for N = 2; for larger batches each image meets another partner, equally random;
* odd batch sizes: timm refuses them (with ``flip(0)`` the middle image would be mixed with itself);
  augkit accepts them (``roll(1)`` pairs every image with another one), so an epoch's last, smaller
  batch needs no ``drop_last``; a batch of one is left unmixed;
* the draws come from augkit's seeded generator, not numpy's global one.

Mixing is linear with weights summing to 1, so it commutes with per-channel normalization:
mix uint8 pixels (returned as float32 on the 0-255 scale) or normalized floats alike.

Python users: call a :class:`BatchAugment` on each batch, or wrap a DataLoader with
:meth:`BatchAugment.iterate`, or pass :class:`MixupCollate` as a DataLoader's ``collate_fn``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate, get_worker_info

from augkit.recipe.batchspec import BatchSpec
from augkit.seeding import derive_seed


def one_hot_smooth(targets: torch.Tensor, num_classes: int, eps: float = 0.0) -> torch.Tensor:
    """Float one-hot targets with label smoothing ``eps``: 1 - eps + eps/K on the class, eps/K elsewhere."""
    off = eps / num_classes
    out = torch.full((targets.shape[0], num_classes), off, dtype=torch.float32, device=targets.device)
    return out.scatter_(1, targets.long().view(-1, 1), 1.0 - eps + off)


def soft_target_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum(target * log_softmax(logits)): cross-entropy for mixed labels."""
    return torch.sum(-soft_targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def rand_bbox(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """timm's cutmix box: side ratio sqrt(1 - lam), centre uniform, clipped to the image (y0, y1, x0, x1).

    As timm's ``rand_bbox``: ``cut // 2`` before the centre and ``(cut + 1) // 2`` after it, so an odd
    cut side keeps its full length (before timm 1.0 both halves were ``cut // 2``, 1 px short)."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y0, y1 = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + (cut_h + 1) // 2, 0, height))
    x0, x1 = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + (cut_w + 1) // 2, 0, width))
    return y0, y1, x0, x1


@dataclass
class BatchAugment:
    """Mix batches as a recipe's ``batch:`` section says; soft targets include label smoothing."""

    spec: BatchSpec
    num_classes: int
    seed: int
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def draw(self, epoch: int, step: int) -> tuple[str, float, np.random.Generator]:
        """The batch's op and lambda, and the generator the cutmix box is drawn from next: all from
        (seed, epoch, step) alone."""
        rng = np.random.default_rng(derive_seed(self.seed, f"batch:{int(step)}", int(epoch), salt="batchaug"))
        s = self.spec
        if rng.random() >= s.p:
            return "none", 1.0, rng
        use_cutmix = s.cutmix_alpha is not None and (s.mixup_alpha is None or rng.random() < s.switch_prob)
        alpha = s.cutmix_alpha if use_cutmix else s.mixup_alpha
        assert alpha is not None  # a spec has at least one kind (parse_batch)
        return ("cutmix" if use_cutmix else "mixup"), float(rng.beta(alpha, alpha)), rng

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, *, epoch: int, step: int
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Mixed float images, soft targets (N, num_classes) and what was done (op, lam, box)."""
        if images.ndim != 4 or targets.ndim != 1 or images.shape[0] != targets.shape[0]:
            raise ValueError(
                f"expected images (N, C, H, W) and targets (N,), got {tuple(images.shape)} and {tuple(targets.shape)}"
            )
        op, lam, rng = self.draw(epoch, step)
        x = images.float() if images.dtype != torch.float32 else images.clone()
        y = one_hot_smooth(targets, self.num_classes, self.label_smoothing)
        info: dict[str, Any] = {"op": op, "lam": lam}
        if op == "none" or x.shape[0] < 2:
            info.update(op="none", lam=1.0)
            return x, y, info
        x_other = x.roll(1, 0)
        if op == "mixup":
            x = x * lam + x_other * (1.0 - lam)
        else:
            h, w = x.shape[-2:]
            y0, y1, x0, x1 = rand_bbox(h, w, lam, rng)
            x[:, :, y0:y1, x0:x1] = x_other[:, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)  # the real share of the image kept
            info.update(lam=lam, box=(y0, y1, x0, x1))
        return x, y * lam + y.roll(1, 0) * (1.0 - lam), info

    def collate(self, samples: list, *, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``default_collate`` of (image, target) samples, then mixed as batch ``step`` of ``epoch``."""
        images, targets = default_collate(samples)[:2]
        return self(images, targets, epoch=epoch, step=step)

    def iterate(self, loader: Iterable, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        """Mix the batches a DataLoader yields, counting steps here (a DataLoader yields batches in
        order whatever its ``num_workers``, so the result does not depend on it)."""
        for step, (images, targets, *_) in enumerate(loader):
            yield self(images, targets, epoch=epoch, step=step)


@dataclass
class MixupCollate:
    """A DataLoader ``collate_fn`` that mixes inside the loader's workers.

    The batch's step is counted without the main process: a map-style DataLoader hands batch
    ``k`` to worker ``k % num_workers``, so worker ``w``'s ``j``-th batch is step
    ``j * num_workers + w``. That holds for a map-style dataset whose workers start fresh each
    epoch (``persistent_workers=False``, the default); call :meth:`set_epoch` before each
    epoch's ``iter(loader)``. Where that does not hold, use :meth:`BatchAugment.iterate`.
    """

    augment: BatchAugment
    epoch: int = 0
    collate_fn: Callable | None = None
    _count: int = field(default=0, repr=False)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._count = int(epoch), 0

    def __call__(self, samples: list) -> tuple[torch.Tensor, torch.Tensor, dict]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        step = self._count * nw + wid
        self._count += 1
        images, targets = (self.collate_fn or default_collate)(samples)[:2]
        return self.augment(images, targets, epoch=self.epoch, step=step)
