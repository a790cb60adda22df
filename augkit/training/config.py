"""The options of ``augkit train`` and the rules that fill their defaults, without importing torch.

Kept apart from :mod:`augkit.training.loop` so the ``train`` command can build its help and check its
options cheaply (``augkit --help`` must not import torch); the run itself lives in
:mod:`augkit.training.loop`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from augkit import devices
from augkit.errors import UsageError
from augkit.limits import DEFAULT_MAX_PIXELS
from augkit.training.freeze import FREEZE_CHOICES
from augkit.training.schedule import SCHEDULES

if TYPE_CHECKING:  # annotation only: recipe.py imports albumentations
    from augkit.recipe.api import Recipe

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHECKS = ("none", "header", "full")
#: ``--decode``: where training images are decoded and augmented (gpu: augkit.training.gpu_decode)
DECODES = ("cpu", "gpu")
#: the files of a run folder (written by augkit.training.run_files)
METRICS, SETTINGS, CURVES, ERRORS = "metrics.csv", "settings.yaml", "curves.png", "errors.jsonl"
#: fields of :class:`TrainConfig` that are library-only (no ``augkit train`` option)
LIBRARY_ONLY = ("progress",)

#: The training defaults, chosen by ``benchmarks/bench_defaults.py`` (ResNet-18 from scratch on
#: digits at 10 and 50 per class, faces and photos, 3 seeds each, 30 epochs; benchmarks/README.md):
#: a per-step one-cycle schedule peaking at 3e-3 with a weight average (EMA, decay 0.999) had the
#: highest mean accuracy over the four kinds (93.0%, against 92.2% for a plain one-cycle script and
#: 90.3% for augkit's earlier constant-then-cosine-per-epoch schedule at 1e-3). 3e-3 is also near
#: fastai's fine-tuning rate (2e-3) for pretrained weights, where the backbone gets less.
DEFAULT_SCHEDULE = "onecycle"
DEFAULT_LR = 3e-3
DEFAULT_EMA = 0.999
#: ``--lr auto``: a learning-rate range test chooses the peak rate (augkit.training.lr_find)
LR_AUTO = "auto"
#: the ``--workers`` default, in words (the help text); :func:`augkit.devices.default_workers` is the rule
WORKERS_RULE = devices.WORKERS_RULES["train"]


def default_workers(device_type: str, cores: int) -> int:
    """DataLoader workers when ``--workers`` is not given: the ``train`` role of the one rule,
    :func:`augkit.devices.default_workers` (decode-heavy photos pay off with ``--cache`` instead)."""
    return devices.default_workers(device_type, "train", cores)


@dataclass
class TrainConfig:
    """Every option of ``augkit train``; ``recipe=None`` (or ``"none"``) trains without augmentation.

    ``cache``: decode and resize every image once into a memory-mapped store (in ``cache_dir``,
    default ``out/cache``), so later epochs skip decoding (:mod:`augkit.training.cache`).
    """

    data: str | os.PathLike
    out: str | os.PathLike
    recipe: str | os.PathLike | Recipe | None = "default"
    arch: str = "resnet18"
    weights: str = "imagenet"  # imagenet | none | a state-dict file or an earlier run folder
    epochs: int = 10
    batch_size: int = 32
    lr: float | str = DEFAULT_LR  # or "auto": a learning-rate range test picks it (augkit.training.lr_find)
    weight_decay: float = 1e-2
    image_size: int = 224
    val_split: float = 0.2
    freeze: str = "auto"
    seed: int = 0
    device: str = "auto"
    workers: int | None = None  # None: default_workers(device, usable cores)
    threads: int | None = None  # None: usable cores - loader workers (augkit.devices.compute_threads)
    precision: str = "auto"
    amp: bool = False  # --amp: float16 autocast on cuda (the same as --precision fp16 there)
    cache: bool = False
    cache_dir: str | os.PathLike | None = None  # None: out/cache; a folder implies cache=True
    resume: bool = False
    label_smoothing: float = 0.0  # CrossEntropyLoss(label_smoothing=...); mixed (soft) targets are smoothed too
    patience: int | None = None  # early stopping: epochs without a better best.pt metric; None: never stop early
    schedule: str = DEFAULT_SCHEDULE  # the learning rate per step: augkit.training.schedule
    warmup: float | None = None  # warm-up epochs (fractions allowed); None: the schedule's default
    #: decay of an exponential moving average of the weights (augkit.training.ema); 0 or None: none
    ema: float | None = DEFAULT_EMA
    check: str = "header"
    decode: str = "cpu"  # gpu: nvJPEG + one grid_sample on the device (training batches only; validation on the CPU)
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    progress: bool = True

    def validate(self) -> None:
        """Reject bad values before any work (exit code 2 from the CLI)."""
        from augkit.models.archs import check_arch  # deferred: archs and checkpoint import torch/torchvision
        from augkit.models.checkpoint import MAX_IMAGE_SIZE

        for ok, message in self._checks(MAX_IMAGE_SIZE):
            if not ok:
                raise UsageError(message)
        check_arch(self.arch, "--arch: ", image_size=self.image_size)
        if self.weights not in ("imagenet", "none") and not Path(self.weights).exists():
            raise UsageError(
                f"--weights {self.weights}: file or run folder not found "
                "(use imagenet, none, a state-dict file or an earlier run folder)"
            )
        data, out = Path(self.data), Path(self.out)
        if not data.is_dir():
            raise UsageError(f"{data}: data folder not found" if not data.exists() else f"{data}: not a folder")
        if out.resolve() == data.resolve() or data.resolve() in out.resolve().parents:
            raise UsageError(f"{out}: the run folder must not be inside the data folder {data}")

    def _checks(self, max_size: int) -> list[tuple[bool, str]]:
        return [
            (self.freeze in FREEZE_CHOICES, f"--freeze {self.freeze!r} is not one of {', '.join(FREEZE_CHOICES)}"),
            (self.device in DEVICES, f"--device {self.device!r} is not one of {', '.join(DEVICES)}"),
            (self.precision in PRECISIONS, f"--precision {self.precision!r} is not one of {', '.join(PRECISIONS)}"),
            (self.check in CHECKS, f"--check {self.check!r} is not one of {', '.join(CHECKS)}"),
            (self.decode in DECODES, f"--decode {self.decode!r} is not one of {', '.join(DECODES)}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (_lr_ok(self.lr), f"--lr must be > 0 (a number) or {LR_AUTO}, got {self.lr!r}"),
            (self.schedule in SCHEDULES, f"--schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}"),
            (
                self.warmup is None or (math.isfinite(self.warmup) and 0 <= self.warmup <= self.epochs),
                f"--warmup must be >= 0 and at most --epochs ({self.epochs}), got {self.warmup}",
            ),
            (
                self.ema is None or self.ema == 0 or (math.isfinite(self.ema) and 0 < self.ema < 1),
                f"--ema must be a decay between 0 and 1 (e.g. 0.999), or 0 for none, got {self.ema}",
            ),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (
                16 <= self.image_size <= max_size,
                f"--image-size must be 16 to {max_size} pixels (what a checkpoint may hold), got {self.image_size}",
            ),
            (0 <= self.val_split < 1, f"--val-split must be in [0, 1), got {self.val_split}"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.patience is None or self.patience >= 1, f"--patience must be >= 1, got {self.patience}"),
            (self.workers is None or self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (self.threads is None or self.threads >= 1, f"--threads must be >= 1, got {self.threads}"),
        ]

    @property
    def lr_auto(self) -> bool:
        return isinstance(self.lr, str) and self.lr.lower() == LR_AUTO

    def cache_folder(self) -> Path | None:
        """The decoded-image cache folder, or None without ``--cache``."""
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        return Path(self.out) / "cache" if self.cache else None


def parse_lr(text: str | float) -> float | str:
    """``--lr``: a positive number, or ``auto`` (a range test picks the rate)."""
    if isinstance(text, (int, float)):
        return float(text)
    if text.strip().lower() == LR_AUTO:
        return LR_AUTO
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--lr {text!r}: not a number; use a learning rate > 0 (e.g. 1e-3) or {LR_AUTO}") from None


def _lr_ok(lr: float | str) -> bool:
    if isinstance(lr, str):
        return lr.lower() == LR_AUTO
    return isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0


class TrainCallbacks:
    """What :func:`augkit.training.loop.train` reports, as methods that do nothing; subclass and override what you need."""

    def on_note(self, text: str) -> None:
        """A remark for the user (plain text): ignored options, resuming, the cache's size."""

    def on_start(self, info: Any) -> None:
        """Everything is checked and resolved; the first epoch is about to start. ``info`` is an
        :class:`augkit.training.loop.StartInfo` (defined there: it holds torch objects)."""

    def on_epoch_start(self, epoch: int, epochs: int, phase: str, batches: int, val_batches: int) -> None:
        """``epoch`` is 1-based; ``val_batches`` is 0 without validation."""

    def on_batch(self, images: int, loss: float, acc: float, images_per_s: float) -> None:
        """After each training batch: its size, and the epoch's running loss, accuracy and speed."""

    def on_val_batch(self, images: int) -> None:
        """After each validation batch."""

    def on_epoch_end(self, row: dict) -> None:
        """The epoch's metrics row (as in metrics.csv)."""
