"""``augkit train`` as a library: ``train(TrainConfig(...), callbacks) -> TrainResult``.

The run is split into small steps that can be used on their own: :func:`load_data`,
:func:`choose_freeze` (in :mod:`augkit.training.freeze`), :func:`build_start_model`,
:func:`train_one_epoch`, :func:`validate`. ``train`` prints nothing: it reports through a
:class:`TrainCallbacks` object (the CLI's draws the progress bars and tables). Everything a run
writes goes to its run folder (see :mod:`augkit.training.run_files` for when):

* ``best.pt`` / ``last.pt``: checkpoints (``torch.load(weights_only=True)``-safe, written
  atomically) with the weights and :class:`~augkit.models.checkpoint.ModelMeta`; ``last.pt`` also holds
  the optimizer and the history, for ``--resume``;
* ``settings.yaml``: every setting, resolved (device, threads, workers, precision, freeze plan,
  recipe, data counts, versions);
* ``metrics.csv``: one row per epoch; ``curves.png``: loss and accuracy curves;
* ``errors.jsonl``: input files left out, one JSON object each (path, reason, detail).

CPU use: the run computes with :func:`augkit.devices.compute_threads` intra-op threads (usable
cores minus loader workers), set before the first operation; each DataLoader worker runs with
one torch thread (DataLoader's own rule) and one OpenCV thread (set in this process before the
workers fork: :func:`augkit.io.images.opencv_threads`).

Reproducibility: the model is initialised from ``seed``; the order of epoch ``e`` and each
sample's augmentation are derived from ``(seed, e)`` alone, so a resumed run and an
uninterrupted one compute the same thing, and on CPU the same seed gives the same metrics.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypedDict

import torch
import torch.distributed
import yaml
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from augkit.devices import cpu_threads, resolve_device, usable_cores
from augkit.errors import AugkitError, ImageError, UsageError
from augkit.io.images import DECODE_POLICY, opencv_threads
from augkit.io.preprocess import IMAGENET_MEAN, IMAGENET_STD, RESIZE_POLICY
from augkit.labels.formats import detect_kind
from augkit.models.archs import build_model
from augkit.models.checkpoint import BEST, LAST, ModelMeta, load_checkpoint, versions
from augkit.models.weights import (
    check_imagenet_reachable,
    imagenet_state_dict,
    load_backbone_weights,
    weights_file_state_dict,
)
from augkit.offline.dst import MANIFEST, latest_rows
from augkit.recipe.api import Recipe, load_recipe
from augkit.recipe.fit import size_warnings
from augkit.seeding import derive_seed
from augkit.training.cache import ImageCache
from augkit.training.config import (  # noqa: F401  (re-exported)
    CURVES,
    DEFAULT_LR,
    DEFAULT_SCHEDULE,
    DEVICES,
    ERRORS,
    METRICS,
    SETTINGS,
    TrainCallbacks,
    TrainConfig,
    default_workers,
)
from augkit.training.dataset import MEMORY_CACHE_BYTES, AugmentedImageFolder
from augkit.training.distributed import DistContext, ShardSampler, local_world_size
from augkit.training.distributed import setup as dist_setup
from augkit.training.ema import ModelEma
from augkit.training.feed import FeedMeter, FeedStats
from augkit.training.freeze import FreezePlan, choose_freeze, set_phase, split_params, train_mode
from augkit.training.gpu_decode import DeviceDecoder, GpuDecodeFolder, check_options, check_recipe, collate
from augkit.training.gpu_decode import describe as describe_decode
from augkit.training.lr_find import LRFindResult, preserved, range_test, sweep_steps
from augkit.training.mixing import BatchAugment, soft_target_cross_entropy
from augkit.training.plot import plot_lr_find
from augkit.training.precision import Precision, choose_precision, model_kind
from augkit.training.prefetch import Prefetcher, describe_feed
from augkit.training.run_files import (
    CheckpointWriter,
    make_run_dir,
    run_dir_lock,
    settings_dict,
    write_curves,
    write_errors,
    write_metrics,
    write_text,
    writing,
)
from augkit.training.schedule import StepLRs

#: settings a resumed run must share with the run it continues
RESUME_KEYS = (
    "arch",
    "weights",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "image_size",
    "val_split",
    "freeze",
    "seed",
    "recipe_hash",
    "label_smoothing",
    "schedule",
    "warmup",
    "ema",
)
#: what a resume key saved before a setting existed meant (runs written by earlier versions resume)
RESUME_DEFAULTS = {"label_smoothing": 0.0, "schedule": "cosine-epoch", "warmup": None, "ema": None}
#: the file --lr auto draws its range test in (RUN_DIR)
LR_FIND_PNG = "lr_find.png"
COMPLETED = "completed"


@dataclass
class Data:
    """The training and validation sets of a run and what was left out."""

    train: AugmentedImageFolder
    val: AugmentedImageFolder | None
    classes: list[str]
    layout: str
    errors: list[ImageError]
    ignored: list[str]

    def counts(self) -> dict[str, list[int]]:
        """Per class: [train images, val images]."""
        out = {c: [0, 0] for c in self.classes}
        for col, ds in enumerate((self.train, self.val)):
            for t in ds.targets if ds is not None else []:
                out[self.classes[t]][col] += 1
        return out

    def describe(self) -> dict:
        """The ``data`` block of settings.yaml."""
        return {
            "layout": self.layout,
            "classes": self.classes,
            "class_to_idx": {c: i for i, c in enumerate(self.classes)},
            "train_images": len(self.train),
            "val_images": len(self.val) if self.val is not None else 0,
            "per_class_train_val": self.counts(),
            "skipped_files": len(self.errors),
            "ignored_files": len(self.ignored),
        }


@dataclass
class StartInfo:
    """What :meth:`TrainCallbacks.on_start` gets: the resolved run, before its first epoch."""

    cfg: TrainConfig  # with workers and threads resolved
    data: Data
    plan: FreezePlan
    device: torch.device
    precision: Precision
    threads: int
    out: Path
    start_epoch: int  # epochs already done (resumed run)


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int  # completed epochs (all of them, counting a resumed run's earlier ones)
    best_epoch: int
    best: dict
    last: dict
    history: list[dict]
    plan: FreezePlan
    device: str
    skipped: list[ImageError]
    resumed_from: int = 0
    precision: str = "fp32"
    threads: int = 1
    workers: int = 0
    stopped: str = COMPLETED  # or "early stop: no improvement in <metric> for N epochs after epoch E"
    mixed: bool = False  # batches mixed (mixup/cutmix): train_acc counts MIXED_ACC
    best_weights: str = "raw"  # what best.pt holds: "raw" weights or their moving average "ema" (--ema)
    lr: float = DEFAULT_LR  # the peak learning rate used (--lr auto: the range test's choice)
    lr_find: dict | None = None  # --lr auto: the range test (LRFindResult.to_dict())
    schedule: str = ""  # StepLRs.describe()


@dataclass
class RunState:
    """One run's moving parts, passed to each epoch."""

    cfg: TrainConfig
    plan: FreezePlan
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    precision: Precision
    data: Data
    train_loader: DataLoader
    val_loader: DataLoader | None
    order: torch.Generator
    device: torch.device
    dist: DistContext
    callbacks: TrainCallbacks
    mix: BatchAugment | None = None  # the recipe's batch: section (mixup/cutmix), else None
    lrs: StepLRs | None = None  # the learning rate of every step (None: epoch_lrs, once per epoch)
    ema: ModelEma | None = None  # --ema: the weights' moving average, updated after every step
    decode: DeviceDecoder | None = None  # --decode gpu: the training batches' pixels are made on the device


# ====================================================================== data


class _FolderOptions(TypedDict):
    """The options every :class:`AugmentedImageFolder` of a run is made with (train and val alike)."""

    image_size: int
    seed: int
    check: str
    max_pixels: int | None
    output: str
    cache: ImageCache | None
    memory_cache: int


def load_data(cfg: TrainConfig, recipe: Recipe | None, cache: ImageCache | None = None) -> Data:
    """``DATA/train`` + ``DATA/val`` when present, else a stratified, seeded split of ``DATA``."""
    root = Path(cfg.data)
    common = _FolderOptions(
        image_size=cfg.image_size,
        seed=cfg.seed,
        check=cfg.check,
        max_pixels=cfg.max_pixels,
        output="uint8",  # normalized on the device: 4x less to copy from the workers
        cache=cache,
        memory_cache=MEMORY_CACHE_BYTES // max(1, cfg.workers or 0),
    )  # one budget in all
    if (root / "train").is_dir():
        full = AugmentedImageFolder(root / "train", recipe, **common)
        if (root / "val").is_dir():
            return _with_val_folder(root, full, common)
        layout = f"{root}/train, split with val_split={cfg.val_split}"
        groups = source_groups(root / "train", full.keys) or source_groups(root, full.keys, "train/")
    else:
        full = AugmentedImageFolder(root, recipe, **common)
        layout = f"{root}, split with val_split={cfg.val_split}"
        groups = source_groups(root, full.keys)
    if groups is not None and cfg.val_split > 0:  # augkit augment's outputs: a source's copies stay together
        train_idx, val_idx = grouped_split(full.targets, groups, cfg.val_split, cfg.seed)
        layout += (
            f", grouped by source: {len(set(groups))} source images of {len(groups)} (from {MANIFEST}; "
            "no source on both sides)"
        )
    else:
        train_idx, val_idx = stratified_split(full.targets, cfg.val_split, cfg.seed)
    val = full.subset(val_idx, recipe=None) if val_idx else None
    data = Data(full.subset(train_idx), val, full.classes, layout, full.errors, full.ignored)
    _require_images(data, full)
    return data


def _with_val_folder(root: Path, full: AugmentedImageFolder, common: _FolderOptions) -> Data:
    val_classes = AugmentedImageFolder(root / "val", None, check="none").classes
    missing = [c for c in val_classes if c not in full.classes]
    if missing:
        raise UsageError(f"{root / 'val'}: class folder(s) missing from {root / 'train'}: {', '.join(missing)}")
    val = AugmentedImageFolder(root / "val", None, classes=full.classes, **common)
    data = Data(
        full, val, full.classes, f"{root}/train + {root}/val", full.errors + val.errors, full.ignored + val.ignored
    )
    _require_images(data)
    return data


def _require_images(data: Data, full: AugmentedImageFolder | None = None) -> None:
    have = {data.classes[t] for t in (full or data.train).targets}
    empty = [c for c in data.classes if c not in have]
    if empty:
        bad = "; ".join(str(e) for e in data.errors[:3])
        raise UsageError(
            f"class(es) with no usable training image: {', '.join(empty)}"
            + (f" (unreadable files: {bad}{' ...' if len(data.errors) > 3 else ''})" if bad else "")
        )


def source_groups(folder: Path, keys: list[str], prefix: str = "") -> list[str] | None:
    """The source image of every item (``keys``: paths relative to the scanned folder), read from
    the ``manifest.jsonl`` that ``augkit augment`` wrote in ``folder`` (its outputs' paths start
    with ``prefix`` there); an item the manifest does not know is its own source. None when there
    is no manifest, or no two items share a source (nothing to group)."""
    if not (folder / MANIFEST).is_file():
        return None
    rows = latest_rows(folder)
    out = []
    for key in keys:
        row = rows.get(prefix + key)
        src = row.get("source") if isinstance(row, dict) else None
        out.append(f"source:{src}" if isinstance(src, str) else f"item:{key}")
    return out if len(set(out)) < len(out) else None


def grouped_split(targets: list[int], groups: list[str], val_split: float, seed: int) -> tuple[list[int], list[int]]:
    """:func:`stratified_split` over groups (the copies of one source image): per class, whole
    groups go to val, in a seeded order, until about ``round(n * val_split)`` images; at least one
    group always stays in train. No group is on both sides."""
    by_class: dict[int, dict[str, list[int]]] = {}
    for i, (t, g) in enumerate(zip(targets, groups)):
        by_class.setdefault(t, {}).setdefault(g, []).append(i)
    train: list[int] = []
    val: list[int] = []
    for t, members in sorted(by_class.items()):
        n = sum(len(m) for m in members.values())
        k = max(round(n * val_split), 1 if val_split > 0 else 0)
        names = sorted(members)
        random.Random(derive_seed(seed, str(t), 0, salt="group-split")).shuffle(names)
        taken = 0
        for j, name in enumerate(names):
            side = val if taken < k and j < len(names) - 1 else train
            side.extend(members[name])
            taken += len(members[name]) if side is val else 0
    return sorted(train), sorted(val)


def stratified_split(targets: list[int], val_split: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): per class, ``round(n * val_split)`` images go to val (at least one
    when ``val_split > 0`` and the class has two or more; at least one always stays in train).
    The choice is seeded and does not depend on the order of other classes."""
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(t, []).append(i)
    train, val = [], []
    for t, idx in sorted(by_class.items()):
        n = len(idx)
        k = min(max(round(n * val_split), 1 if val_split > 0 and n >= 2 else 0), n - 1)
        shuffled = idx[:]
        random.Random(derive_seed(seed, str(t), 0, salt="split")).shuffle(shuffled)
        val.extend(shuffled[:k])
        train.extend(shuffled[k:])
    return sorted(train), sorted(val)


def make_loader(
    ds: AugmentedImageFolder,
    cfg: TrainConfig,
    device: torch.device,
    *,
    shuffle: bool,
    order: torch.Generator | None = None,
    dist: DistContext | None = None,
    plans: bool = False,
) -> DataLoader:
    """A loader whose shuffling uses its own generator (reseeded per epoch by the caller), so
    the order does not depend on the worker count, the global RNG or a resume. ``plans``
    (``--decode gpu``): its batches are plans (:mod:`augkit.training.gpu_decode`), not pixels."""
    assert cfg.workers is not None  # resolved by train (default_workers) before any loader is made
    sampler: RandomSampler | DistributedSampler | ShardSampler | None = (
        RandomSampler(ds, generator=order) if shuffle else None
    )
    if dist is not None and dist.enabled:  # under torchrun: this rank's shard (augkit.training.distributed)
        sampler = dist.train_sampler(ds, cfg.seed) if shuffle else dist.eval_sampler(ds)
    n = len(sampler) if sampler is not None else len(ds)
    drop_last = shuffle and n > cfg.batch_size and n % cfg.batch_size == 1  # BatchNorm needs 2+
    return DataLoader(
        GpuDecodeFolder(ds) if plans else ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        persistent_workers=cfg.workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed),
        collate_fn=collate if plans else None,
    )


# ====================================================================== model


def build_start_model(arch: str, num_classes: int, weights: str) -> tuple[nn.Module, bool]:
    """The model to train and whether its backbone is pretrained. The head is always new."""
    model = build_model(arch, num_classes)
    if weights == "none":
        return model, False
    if weights == "imagenet":
        load_backbone_weights(model, imagenet_state_dict(arch), f"ImageNet weights for {arch}")
    else:
        load_backbone_weights(model, weights_file_state_dict(weights), str(weights))
    return model, True


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with two groups, backbone (0) and head (1); their learning rates are set per epoch.

    PyTorch's fused AdamW kernel where this torch and device have one (CPU since torch 2.4, CUDA):
    one pass over the parameters instead of a dozen small ops per tensor. On CPU it is most of
    what a step costs beside the model (benchmarks/README.md has the figures). Elsewhere the default
    implementation."""
    backbone, head = split_params(model)
    groups = [{"params": backbone, "name": "backbone"}, {"params": head, "name": "head"}]
    lr = DEFAULT_LR if cfg.lr_auto else float(cfg.lr)  # the rates are set before every step anyway
    try:
        return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device/dtype or torch
        return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)


def optimizer_kernel(optimizer: torch.optim.Optimizer) -> str:
    """How ``optimizer`` updates (recorded in settings.yaml): "fused" or "per-tensor". Read from
    the parameter groups, which a resumed run takes from its checkpoint (one written before the
    fused kernel keeps the per-tensor update, and the numbers it had)."""
    return "fused" if all(g.get("fused") for g in optimizer.param_groups) else "per-tensor"


def epoch_lrs(cfg: TrainConfig, plan: FreezePlan, epoch: int) -> tuple[float, float]:
    """(backbone lr, head lr) for a 0-based epoch: constant during the head-only warm-up, then
    a cosine decay over the remaining epochs; a frozen backbone gets 0."""
    peak = float(cfg.lr)  # a number: an --lr auto run takes its rates from RunState.lrs, never from here
    start = plan.warmup_epochs if plan.mode == "finetune" else 0
    if epoch < start:
        return 0.0, peak
    span = max(1, cfg.epochs - start)
    lr = peak * 0.5 * (1 + math.cos(math.pi * (epoch - start) / span))
    return (0.0 if plan.phase(epoch) == "head" else lr * plan.backbone_lr_mult), lr


def set_lrs(optimizer: torch.optim.Optimizer, lrs: tuple[float, float]) -> None:
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr


# ====================================================================== one epoch


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    phase: str = "all",
    scaler: torch.amp.GradScaler | None = None,
    precision: Precision | None = None,
    on_batch: Callable[[int, float, float, float], None] | None = None,
    label_smoothing: float = 0.0,
    mix: BatchAugment | None = None,
    epoch: int = 0,
    lr_at: Callable[[int], tuple[float, float]] | None = None,
    ema: ModelEma | None = None,
    decode: Callable[[Any, torch.device], torch.Tensor] | None = None,
) -> dict:
    """One pass over ``loader``; returns loss, accuracy, images, seconds and the head's learning
    rate at the first and last step (``lr_first``, ``lr_last``).

    ``lr_at(step)`` gives the (backbone, head) learning rates of each step of the epoch (set before
    it; None: the optimizer's rates as they are); ``ema`` is updated after every step.

    Batches reach the device through :class:`~augkit.training.prefetch.Prefetcher` (on CUDA the next
    batch is copied and prepared on a side stream while this one trains).
    ``mix`` (mixup/cutmix) mixes each normalized batch on the device, its draws seeded from
    (its seed, ``epoch``, batch index) alone; the loss is then the soft-target cross entropy
    (smoothed by ``mix.label_smoothing``) and accuracy counts :data:`MIXED_ACC`. Without it the
    loss is ``CrossEntropyLoss(label_smoothing=label_smoothing)``.
    ``on_batch(images, mean_loss, accuracy, images_per_second)`` is called after each batch.
    """
    precision = precision or Precision("fp32", False, "")
    train_mode(model, phase)
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    total = correct = 0
    loss_sum = 0.0
    lr_first = lr_last = None
    meter = FeedMeter()  # who waited: the time in the loader's next() (inside the prefetcher: the loader alone)
    feed = Prefetcher(device, channels_last=precision.channels_last, mix=mix, epoch=epoch, decode=decode)
    start = time.perf_counter()
    for step, (x, target, y) in enumerate(feed(meter.iterate(loader))):
        if lr_at is not None:
            set_lrs(optimizer, lr_at(step))
        lr_last = optimizer.param_groups[-1]["lr"]
        lr_first = lr_last if lr_first is None else lr_first
        with precision.autocast(device):
            logits = model(x)
            loss = criterion(logits, target) if mix is None else soft_target_cross_entropy(logits, target)
        value = loss.item()
        if not math.isfinite(value):  # NaN weights, or a learning rate that blew up: stop, never train on
            raise AugkitError(
                f"the training loss is {value} at epoch {epoch + 1}, step {step + 1} (learning rate "
                f"{lr_last:g}): the weights or the learning rate make training diverge; lower --lr, or "
                "check the starting weights. Nothing after this step was trained"
            )
        _step(loss, optimizer, scaler)
        if ema is not None:
            ema.update(model)
        n = y.numel()
        total += n
        loss_sum += value * n
        correct += (logits.argmax(1) == y).sum().item()
        if on_batch is not None:
            on_batch(n, loss_sum / total, correct / total, total / max(1e-9, time.perf_counter() - start))
    seconds = time.perf_counter() - start
    return {
        "loss": loss_sum / max(1, total),
        "acc": correct / max(1, total),
        "images": total,
        "seconds": seconds,
        "wait_seconds": meter.wait_seconds,
        "lr_first": lr_first,
        "lr_last": lr_last,
    }


def _step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    *,
    precision: Precision | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Loss and accuracy of ``model`` (eval mode) on ``loader``."""
    precision = precision or Precision("fp32", False, "")
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    total = correct = 0
    loss_sum = 0.0
    for x, _, y in Prefetcher(device, channels_last=precision.channels_last)(loader):
        with precision.autocast(device):
            logits = model(x)
        loss_sum += criterion(logits.float(), y).item()
        correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
        if on_batch is not None:
            on_batch(y.numel())
    return {"loss": loss_sum / max(1, total), "acc": correct / max(1, total), "images": total}


def _run_epoch(epoch: int, run: RunState) -> dict:
    """Train (and validate) one 0-based epoch; its metrics row."""
    cfg, cb, dist = run.cfg, run.callbacks, run.dist
    phase = run.plan.phase(epoch)
    set_phase(run.model, phase)
    net = dist.wrap(run.model)  # DistributedDataParallel under torchrun (rewrapped when the phase changes)
    dist.set_epoch(run.train_loader, epoch)
    schedule = run.lrs
    lrs = schedule.at(epoch, 0) if schedule is not None else epoch_lrs(cfg, run.plan, epoch)
    set_lrs(run.optimizer, lrs)
    run.data.train.set_epoch(epoch)
    run.order.manual_seed(derive_seed(cfg.seed, "order", epoch, salt="train"))
    cb.on_epoch_start(
        epoch + 1, cfg.epochs, phase, len(run.train_loader), len(run.val_loader) if run.val_loader is not None else 0
    )
    tr = dist.reduce(
        train_one_epoch(
            net,
            run.train_loader,
            run.optimizer,
            run.device,
            phase=phase,
            scaler=run.scaler,
            precision=run.precision,
            on_batch=cb.on_batch,
            label_smoothing=cfg.label_smoothing,
            mix=run.mix,
            epoch=epoch,
            lr_at=(lambda step: schedule.at(epoch, step)) if schedule is not None else None,
            ema=run.ema,
            decode=run.decode,
        )
    )
    va = ema_va = None
    if run.val_loader is not None:
        va = dist.reduce(
            validate(run.model, run.val_loader, run.device, precision=run.precision, on_batch=cb.on_val_batch)
        )
        if run.ema is not None:  # the moving average, validated beside the raw weights
            ema_va = dist.reduce(validate(run.ema.module, run.val_loader, run.device, precision=run.precision))
    seconds = tr["seconds"]
    row = {
        "epoch": epoch + 1,
        "phase": phase,
        "train_loss": tr["loss"],
        "train_acc": tr["acc"],
        "val_loss": va["loss"] if va else None,
        "val_acc": va["acc"] if va else None,
        "lr_backbone": lrs[0],
        "lr_head": lrs[1],
        "lr_first": tr.get("lr_first"),
        "lr_last": tr.get("lr_last"),
        "seconds": round(seconds, 3),
        "images_per_s": round(tr["images"] / max(1e-9, seconds), 1),
        "ema_val_loss": ema_va["loss"] if ema_va else None,
        "ema_val_acc": ema_va["acc"] if ema_va else None,
    }
    # ema_va is only computed beside va
    row["weights"] = "ema" if ema_va and va is not None and _val_score(ema_va) > _val_score(va) else "raw"
    row.update(FeedStats(tr["images"], seconds, tr.get("wait_seconds", 0.0), cfg.workers or 0).row())
    cb.on_epoch_end(row)
    return row


def _val_score(va: dict) -> tuple[float, float]:
    return va["acc"], -va["loss"]


def _score(row: dict) -> tuple[float, float]:
    """How good an epoch's best.pt candidate is: val accuracy (ties: val loss) of the weights it
    picked, its raw weights or (``weights: ema``) their moving average."""
    pre = "ema_" if row.get("weights") == "ema" else ""
    return row[pre + "val_acc"], -row[pre + "val_loss"]


def _better(row: dict, best: dict) -> bool:
    if not best:
        return True
    if row["val_acc"] is None:
        return row["train_loss"] < best["train_loss"]
    return _score(row) > _score(best)


# ====================================================================== the run


def resume_key(cfg: TrainConfig, recipe: Recipe | None) -> dict:
    d = {k: getattr(cfg, k) for k in RESUME_KEYS if k != "recipe_hash"}
    d["weights"] = str(d["weights"])
    d["ema"] = cfg.ema or None  # 0 and None both mean no average
    d["recipe_hash"] = recipe.hash if recipe is not None else None
    return d


def model_meta(cfg: TrainConfig, recipe: Recipe | None, classes: list[str]) -> ModelMeta:
    return ModelMeta(
        arch=cfg.arch,
        classes=list(classes),
        class_to_idx={c: i for i, c in enumerate(classes)},
        image_size=cfg.image_size,
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        decode_policy=DECODE_POLICY,
        resize_policy=RESIZE_POLICY,
        recipe_text=recipe.text if recipe is not None else "",
        recipe_name=recipe.name if recipe is not None else "",
        versions=versions(),
    )


@contextlib.contextmanager
def deterministic(seed: int, device: torch.device):
    """Seed torch and ask for deterministic kernels; restore the caller's global state afterwards."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    prev = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev[2], prev[3]


def _resolve_recipe(recipe) -> Recipe | None:
    if recipe is None or isinstance(recipe, Recipe):
        return recipe
    return None if str(recipe).lower() == "none" else load_recipe(recipe)


def _refuse_labelled_data(data: Path) -> None:
    """``train`` trains classifiers on class folders: a YOLO/COCO/VOC/mask dataset would be read as
    classes named ``images`` and ``labels`` (or ``Annotations``...), a model of nonsense."""
    kind = detect_kind(data)
    if kind is not None:
        raise UsageError(
            f"{data}: looks like a {kind} dataset (labelled images), not class folders: augkit train trains "
            "classifiers. For detection or segmentation, feed augkit.training.detection.LabelledDataset to your "
            "own training loop (docs/labels.md); augkit augment augments such a dataset offline"
        )


def _refuse_existing_run(cfg: TrainConfig, out: Path) -> None:
    """Never overwrite a run: without ``--resume`` the run folder must not hold one."""
    existing = [n for n in (LAST, BEST, METRICS) if (out / n).exists()]
    if existing and not cfg.resume:
        raise UsageError(
            f"{out}: already holds a run ({', '.join(existing)}); pass --resume to continue it "
            "or choose another run folder"
        )


def _start_state(cfg: TrainConfig, out: Path, key: dict, classes: list[str], note) -> dict | None:
    """The ``last.pt`` to resume from (checked against this run's settings), or None to start fresh."""
    last = out / LAST
    if not cfg.resume:
        return None
    if not last.is_file():
        note(f"--resume: {out} has no {LAST} yet: starting from epoch 1")
        return None
    ckpt = load_checkpoint(last)
    saved = ckpt.get("settings", {})
    diff = [
        f"{k}: run has {saved.get(k, RESUME_DEFAULTS.get(k))!r}, now {key[k]!r}"
        for k in RESUME_KEYS
        if saved.get(k, RESUME_DEFAULTS.get(k)) != key[k]
    ]
    if ckpt["meta"]["classes"] != classes:
        diff.append(f"classes: run has {ckpt['meta']['classes']}, data now has {classes}")
    if diff:
        raise UsageError(
            f"{last}: cannot resume with different settings ({'; '.join(diff)}). Use the original "
            f"settings, or start a new run folder (--weights {out} starts from its weights)"
        )
    return ckpt


def train(cfg: TrainConfig, callbacks: TrainCallbacks | None = None) -> TrainResult:
    """Run (or resume) a training run; see the module docstring for what it writes. The run
    folder is locked for the whole run: a second run into it is refused (exit 2)."""
    with run_dir_lock(Path(cfg.out)):
        return _train(cfg, callbacks)


def _train(cfg: TrainConfig, callbacks: TrainCallbacks | None = None) -> TrainResult:
    """:func:`train` under the run folder's lock.

    Everything that can be wrong (options, data, weights, an existing run) is found before the
    run folder is written (only ``--cache`` without a cache folder creates ``RUN_DIR/cache`` first).
    """
    cfg.validate()
    dist = dist_setup(resolve_device(cfg.device))  # DDP when launched by torchrun (augkit.training.distributed)
    device = dist.device
    cb = callbacks if callbacks is not None and dist.is_main else TrainCallbacks()  # only rank 0 reports
    workers = cfg.workers
    if workers is None:
        workers = default_workers(device.type, usable_cores())
        cfg = replace(cfg, workers=workers)
    if cfg.amp and device.type != "cuda":
        cb.on_note(f"--amp only has an effect on cuda; training on {device.type} without it")
    # refuses an impossible --precision before any work; decided again with the model built (_prepare)
    choose_precision(cfg.precision, device, cfg.image_size, amp=cfg.amp and device.type == "cuda")
    recipe, out = _resolve_recipe(cfg.recipe), Path(cfg.out)
    if cfg.decode == "gpu":  # a recipe the device can run, no --cache, a CUDA device: before any work
        check_options(recipe, device, cache=cfg.cache_folder() is not None)
    _refuse_existing_run(cfg, out)
    _refuse_labelled_data(Path(cfg.data))
    for w in size_warnings(recipe, cfg.image_size) if recipe is not None else []:
        cb.on_note(f"warning: {w}")
    if str(cfg.weights) == "imagenet" and not cfg.resume:  # a first run offline: say so before any work
        check_imagenet_reachable(cfg.arch)
    with cpu_threads(workers, device) as default_threads:  # before the first op: threads + workers <= cores
        threads = _set_threads(cfg, dist, device, default_threads, workers)
        cfg = replace(cfg, threads=threads)
        data = load_data(cfg, recipe, _cache(cfg, cb.on_note))
        state = _start_state(cfg, out, resume_key(cfg, recipe), data.classes, cb.on_note)
        with deterministic(cfg.seed, device), opencv_threads(1):  # 1 OpenCV thread, set before workers fork
            run = _prepare(cfg, data, state, device, dist, cb, recipe)
            history, best = _restore(state, run)
            lrs, found = _resolve_lr(run, state)
            precision = run.precision
            cb.on_start(StartInfo(cfg, data, run.plan, device, precision, threads, out, len(history)))
            settings = settings_dict(cfg, recipe, data, run.plan, device, precision, threads)
            settings["resolved"]["optimizer"]["kernel"] = optimizer_kernel(run.optimizer)
            settings["resolved"]["feed"] = describe_feed(device, mixed=run.mix is not None)
            if run.decode is not None:
                settings["resolved"]["decode"] = describe_decode(run.decode.spec)
            _schedule_settings(settings, run, lrs, found)
            if dist.is_main:
                _write_start(out, settings, data, dist)
                if found is not None and state is None:
                    write_lr_find(out, found)
            writer = CheckpointWriter(
                out,
                model_meta(cfg, recipe, data.classes),
                {
                    "settings": resume_key(cfg, recipe),
                    "plan": run.plan.to_dict(),
                    **({"lr_find": found.to_dict()} if found is not None else {}),
                },
                enabled=dist.is_main,
            )
            history, best, stopped = _loop(run, history, best, out, writer)
            if dist.is_main:  # settings.yaml ends with how the run ended
                settings["resolved"]["outcome"] = {
                    "stopped": stopped,
                    "epochs": len(history),
                    "best_epoch": int(best["epoch"]),
                }
                write_text(out / SETTINGS, yaml.safe_dump(settings, sort_keys=False, allow_unicode=True))
    dist.close()
    return TrainResult(
        out,
        len(history),
        int(best["epoch"]),
        best,
        history[-1],
        history,
        run.plan,
        str(device),
        data.errors,
        state["epoch"] if state else 0,
        precision.name,
        threads,
        workers,
        stopped,
        run.mix is not None,
        best.get("weights", "raw"),
        lrs.lr,
        found.to_dict() if found is not None else None,
        lrs.describe(),
    )


def _set_threads(cfg: TrainConfig, dist: DistContext, device: torch.device, default: int, workers: int) -> int:
    """``--threads`` if given; under torchrun on CPU each of this machine's processes gets its share
    of the cores; else the :func:`~augkit.devices.cpu_threads` rule already in force."""
    n = default
    if cfg.threads is not None:
        n = cfg.threads
    elif dist.enabled and device.type == "cpu":
        n = max(1, usable_cores() // local_world_size() - workers)
    torch.set_num_threads(n)
    return n


def _cache(cfg: TrainConfig, note: Callable[[str], None]) -> ImageCache | None:
    folder = cfg.cache_folder()
    if folder is None:
        return None
    return ImageCache(folder, cfg.image_size, max_pixels=cfg.max_pixels, on_note=note)


def _prepare(
    cfg: TrainConfig,
    data: Data,
    state: dict | None,
    device: torch.device,
    dist: DistContext,
    cb: TrainCallbacks,
    recipe: Recipe | None = None,
) -> RunState:
    """The model (fresh, or to be restored from ``last.pt``), optimizer, scaler, loaders and the
    recipe's batch mixing."""
    if state:  # the weights come from last.pt: no download, no weights file needed
        model, plan = build_model(cfg.arch, len(data.classes)), FreezePlan(**state["plan"])
    else:
        model, pretrained = build_start_model(cfg.arch, len(data.classes), str(cfg.weights))
        plan = choose_freeze(cfg.freeze, len(data.train), len(data.classes), cfg.epochs, pretrained)
    # the layout (channels_last) depends on the kind of model: decided again now that it is built
    amp = cfg.amp and device.type == "cuda"
    precision = choose_precision(cfg.precision, device, cfg.image_size, amp=amp, kind=model_kind(model))
    # torch's stubs type memory_format only as Module.to's sole argument; at runtime it goes with a device
    model.to(device, memory_format=torch.channels_last if precision.channels_last else torch.preserve_format)  # type: ignore[call-overload]  # stubs
    optimizer = make_optimizer(model, cfg)  # after the move: whether a fused kernel exists depends on the device
    order = torch.Generator()
    gpu = cfg.decode == "gpu"
    train_loader = make_loader(data.train, cfg, device, shuffle=True, order=order, dist=dist, plans=gpu)
    val_loader = make_loader(data.val, cfg, device, shuffle=False, dist=dist) if data.val is not None else None
    mix = (
        BatchAugment(recipe.batch, len(data.classes), cfg.seed, cfg.label_smoothing)
        if recipe is not None and recipe.batch is not None
        else None
    )
    ema = ModelEma(model, cfg.ema) if cfg.ema else None  # 0 or None: no average
    return RunState(
        cfg,
        plan,
        model,
        optimizer,
        precision.scaler(device),
        precision,
        data,
        train_loader,
        val_loader,
        order,
        device,
        dist,
        cb,
        mix,
        ema=ema,
        decode=DeviceDecoder(check_recipe(recipe), cfg.image_size) if gpu else None,
    )


def _restore(state: dict | None, run: RunState) -> tuple[list[dict], dict]:
    """Load a resumed run's weights, optimizer and scaler; returns (history, best row)."""
    if not state:
        return [], {}
    run.model.load_state_dict(state["state_dict"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None and state.get("ema"):
        run.ema.load_state_dict(state["ema"])
    run.callbacks.on_note(f"resuming {Path(run.cfg.out) / LAST} after epoch {state['epoch']} of {run.cfg.epochs}")
    return list(state["history"]), dict(state.get("best") or {})


# ====================================================================== learning rate


def _resolve_lr(run: RunState, state: dict | None) -> tuple[StepLRs, LRFindResult | None]:
    """Set ``run.lrs``, the rate of every step; with ``--lr auto`` its peak comes from a range test
    (:func:`find_lr`; a resumed run reuses the one saved in ``last.pt``). Returns ``run.lrs`` and
    the test, if any."""
    cfg, found = run.cfg, None
    if cfg.lr_auto:
        saved = (state or {}).get("lr_find")
        if saved:
            found = LRFindResult(**saved)
        else:
            start = StepLRs(cfg.schedule, DEFAULT_LR, cfg.epochs, len(run.train_loader), cfg.warmup, run.plan)
            n = sweep_steps(cfg.epochs * len(run.train_loader))
            run.callbacks.on_note(f"lr auto: learning-rate range test over {n} steps ...")
            found = find_lr(run, start.start_epoch, n)
            if run.dist.enabled:  # every rank trains with rank 0's choice
                box = [found]
                torch.distributed.broadcast_object_list(box, src=0)
                found = box[0]
            run.callbacks.on_note(found.summary() + f" ({LR_FIND_PNG} in the run folder)")
    lr = found.lr if found is not None else float(cfg.lr)
    run.lrs = StepLRs(cfg.schedule, lr, cfg.epochs, len(run.train_loader), cfg.warmup, run.plan)
    return run.lrs, found


def find_lr(run: RunState, start_epoch: int, steps: int) -> LRFindResult:
    """``--lr auto``'s range test (:mod:`augkit.training.lr_find`) on this run's model, optimizer
    and training data, in the phase the schedule starts with (the backbone at its share of the
    rate); everything it changes is put back. Its data order and augmentations come from the seed."""
    cfg, plan = run.cfg, run.plan
    phase = plan.phase(start_epoch)
    mult = 0.0 if phase == "head" else plan.backbone_lr_mult

    def batches():
        for k in itertools.count():
            run.data.train.set_epoch(k)
            run.order.manual_seed(derive_seed(cfg.seed, "order", k, salt="lr_find"))
            yield from run.train_loader

    feed = batches()

    def step(lr: float) -> float:
        try:
            tr = train_one_epoch(
                run.model,
                [next(feed)],
                run.optimizer,
                run.device,
                phase=phase,
                scaler=run.scaler,
                precision=run.precision,
                label_smoothing=cfg.label_smoothing,
                mix=run.mix,
                lr_at=lambda _: (lr * mult, lr),
                decode=run.decode,
            )
        except AugkitError:  # train_one_epoch refuses a non-finite loss: for the sweep, that is divergence
            return math.nan
        return tr["loss"]

    scaler = run.scaler.state_dict() if run.scaler is not None else None
    try:
        with preserved(run.model, run.optimizer):
            set_phase(run.model, phase)
            return range_test(step, steps)
    finally:
        feed.close()
        if run.scaler is not None and scaler is not None:  # (saved above whenever there is a scaler)
            run.scaler.load_state_dict(scaler)


def write_lr_find(out: Path, found: LRFindResult) -> None:
    """RUN_DIR/lr_find.png: the sweep, its minimum and the chosen rate."""
    with writing(out / LR_FIND_PNG):
        plot_lr_find(
            found.lrs, found.losses, found.smoothed, found.lr, found.rule, out / LR_FIND_PNG, minimum=found.minimum
        )


def _schedule_settings(settings: dict, run: RunState, lrs: StepLRs, found: LRFindResult | None) -> None:
    """settings.yaml: the learning rate used (``lrs``: the run's schedule), how it was chosen, the
    schedule and the EMA."""
    opt = settings["resolved"]["optimizer"]
    opt["lr"] = lrs.lr
    opt["lr_source"] = "--lr auto (range test)" if found is not None else "--lr"
    opt["schedule"] = lrs.to_dict()
    if found is not None:
        settings["resolved"]["lr_find"] = {
            "chosen_lr": found.lr,
            "rule": found.rule,
            "steps": found.steps,
            "planned_steps": found.planned,
            "stopped": found.stopped,
            "seconds": round(found.seconds, 2),
            "sweep": f"{found.lrs[0]:.3g} to {found.lrs[-1]:.3g}",
            "plot": LR_FIND_PNG,
        }
    if run.cfg.ema:
        settings["resolved"]["ema"] = {
            "decay": run.cfg.ema,
            "semantics": "timm ModelEmaV3 (decay warm-up 1-(1+n)^-2/3, buffers copied), updated every step",
            "best_pt": "the raw or the averaged weights, whichever validates better (ties: raw)"
            if run.val_loader is not None
            else "raw weights (no validation images to compare the average on); last.pt keeps the average",
        }


def _write_start(out: Path, settings: dict, data: Data, dist: DistContext) -> None:
    make_run_dir(out)
    write_errors(out / ERRORS, data.errors)
    if dist.enabled:
        settings["resolved"]["distributed"] = {"world_size": dist.world_size, "backend": dist.backend}
    write_text(out / SETTINGS, yaml.safe_dump(settings, sort_keys=False, allow_unicode=True))


def _loop(
    run: RunState, history: list[dict], best: dict, out: Path, writer: CheckpointWriter
) -> tuple[list[dict], dict, str]:
    """The remaining epochs (until ``--patience`` stops them); metrics after each, checkpoints on a
    budget (and at the last epoch run), curves at the end. Returns (history, best row, why it ended)."""
    main, epochs, start = run.dist.is_main, run.cfg.epochs, len(history)
    stopped = stop_reason(history, best, run.cfg.patience)  # a resumed run may have stopped already
    try:
        for epoch in range(start, epochs if stopped is None else start):
            row = _run_epoch(epoch, run)
            history.append(row)
            improved = _better(row, best)
            best = dict(row) if improved else best
            stopped = stop_reason(history, best, run.cfg.patience)
            if main:
                write_metrics(out / METRICS, history)
                writer.epoch_done(
                    run.model,
                    run.optimizer,
                    run.scaler,
                    history,
                    best,
                    improved,
                    epoch + 1 == epochs or stopped is not None,
                    best_model=run.ema.module if run.ema is not None and row["weights"] == "ema" else None,
                    last_extra={"ema": run.ema.state_dict()} if run.ema is not None else None,
                )
            if stopped is not None:
                run.callbacks.on_note(stopped)
                break
    except BaseException:
        if main:
            with contextlib.suppress(Exception):  # the interruption is what the user must see
                writer.close()  # a checkpoint being written is finished, never left half-way
            with contextlib.suppress(Exception):
                write_curves(out, history)
        raise
    writer.close()  # every checkpoint is on disk before the run reports its end
    if len(history) == start:
        run.callbacks.on_note(
            f"{out}: "
            + (f"all {epochs} epochs are already done" if stopped is None else f"this run already ended ({stopped})")
        )
        if main:
            write_metrics(out / METRICS, history)
    if main:
        write_curves(out, history, int(best["epoch"]) if best.get("epoch") else None, stopped)
    return history, best, stopped or COMPLETED


def stop_reason(history: list[dict], best: dict, patience: int | None) -> str | None:
    """Why to stop early after the last epoch of ``history`` (``patience`` epochs since the best
    one, by the metric that picks ``best.pt``), or None to go on."""
    if patience is None or not history or not best:
        return None
    since = int(history[-1]["epoch"]) - int(best["epoch"])
    if since < patience:
        return None
    return f"early stop: no improvement in {improvement_rule(best)} for {since} epochs after epoch {int(best['epoch'])}"


def improvement_rule(best: dict) -> str:
    """The rule :func:`_better` applies (what picks ``best.pt`` and what ``--patience`` waits for), in words."""
    if best.get("val_acc") is None:
        return "train_loss (lower is better)"
    ema = " of the weights best.pt keeps (raw or EMA)" if best.get("ema_val_acc") is not None else ""
    return f"val_acc{ema} (an equal val_acc with a lower val_loss counts as an improvement)"
