"""``augkit train`` as a library: ``train(TrainConfig(...)) -> TrainResult``.

The run is split into small steps that can be used on their own: :func:`load_data`,
:func:`choose_freeze` (in :mod:`augkit.freeze`), :func:`build_start_model`,
:func:`train_one_epoch`, :func:`evaluate`. Everything a run writes goes to its run folder:

* ``best.pt`` / ``last.pt``: checkpoints (``torch.load(weights_only=True)``-safe, written
  atomically) with the weights and :class:`~augkit.checkpoint.ModelMeta`; ``last.pt`` also holds
  the optimizer and the history, for ``--resume``;
* ``settings.yaml``: every setting, resolved (device, freeze plan, recipe, data counts, versions);
* ``metrics.csv``: one row per epoch; ``curves.png``: loss and accuracy curves;
* ``errors.jsonl``: input files left out, one JSON object each (path, reason, detail).

Reproducibility: the model is initialised from ``seed``; the order of epoch ``e`` and each
sample's augmentation are derived from ``(seed, e)`` alone, so a resumed run and an
uninterrupted one compute the same thing, and on CPU the same seed gives the same metrics.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from rich.console import Console
from rich.markup import escape as esc
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from .checkpoint import BEST, LAST, ModelMeta, load_checkpoint, save_checkpoint, versions
from .dataset import CHECKS, AugmentedImageFolder
from .distributed import DistContext, setup as dist_setup
from .errors import ImageError, UsageError
from .devices import resolve_device
from .freeze import FREEZE_CHOICES, FreezePlan, choose_freeze, set_phase, split_params, train_mode
from .images import DECODE_POLICY, DEFAULT_MAX_PIXELS, atomic_write_text, opencv_threads
from .models import ARCHS, build_model, imagenet_state_dict, load_backbone_weights, weights_file_state_dict
from .plot import plot_curves
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, RESIZE_POLICY
from .recipe import Recipe, load_recipe
from .seeding import derive_seed

DEVICES = ("auto", "cpu", "cuda", "mps")
METRICS, SETTINGS, CURVES, ERRORS = "metrics.csv", "settings.yaml", "curves.png", "errors.jsonl"
METRIC_COLUMNS = ("epoch", "phase", "train_loss", "train_acc", "val_loss", "val_acc", "lr_backbone", "lr_head",
                  "seconds", "images_per_s")
#: settings a resumed run must share with the run it continues
RESUME_KEYS = ("arch", "weights", "epochs", "batch_size", "lr", "weight_decay", "image_size", "val_split", "freeze",
               "seed", "recipe_hash")


def default_workers(device_type: str = "cpu") -> int:
    """DataLoader workers when not given: on a GPU as many as the cores allow (the GPU waits for
    data otherwise); on CPU a few, since every worker takes a core from the training itself."""
    cpus = os.cpu_count() or 1
    if device_type in ("cuda", "mps"):
        return max(0, min(16, cpus - 1))
    return 0 if cpus < 2 else max(1, min(4, cpus // 4))


@dataclass
class TrainConfig:
    """Every option of ``augkit train``; ``recipe=None`` (or ``"none"``) trains without augmentation."""

    data: str | os.PathLike
    out: str | os.PathLike
    recipe: str | os.PathLike | Recipe | None = "default"
    arch: str = "resnet18"
    weights: str = "imagenet"  # imagenet | none | a state-dict file or an earlier run folder
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    image_size: int = 224
    val_split: float = 0.2
    freeze: str = "auto"
    seed: int = 0
    device: str = "auto"
    workers: int | None = None  # None: default_workers(device)
    amp: bool = False
    resume: bool = False
    check: str = "header"
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    progress: bool = True

    def validate(self) -> None:
        """Reject bad values before any work (exit code 2 from the CLI)."""
        checks = [
            (self.arch in ARCHS, f"--arch {self.arch!r} is not one of {', '.join(ARCHS)}"),
            (self.freeze in FREEZE_CHOICES, f"--freeze {self.freeze!r} is not one of {', '.join(FREEZE_CHOICES)}"),
            (self.device in DEVICES, f"--device {self.device!r} is not one of {', '.join(DEVICES)}"),
            (self.check in CHECKS, f"--check {self.check!r} is not one of {', '.join(CHECKS)}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.image_size >= 16, f"--image-size must be >= 16 pixels, got {self.image_size}"),
            (0 <= self.val_split < 1, f"--val-split must be in [0, 1), got {self.val_split}"),
            (self.workers is None or self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        if self.weights not in ("imagenet", "none") and not Path(self.weights).exists():
            raise UsageError(f"--weights {self.weights}: file or run folder not found "
                             "(use imagenet, none, a state-dict file or an earlier run folder)")
        data, out = Path(self.data), Path(self.out)
        if not data.is_dir():
            raise UsageError(f"{data}: data folder not found" if not data.exists() else f"{data}: not a folder")
        if out.resolve() == data.resolve() or data.resolve() in out.resolve().parents:
            raise UsageError(f"{out}: the run folder must not be inside the data folder {data}")


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
            for t in (ds.targets if ds is not None else []):
                out[self.classes[t]][col] += 1
        return out


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


# ====================================================================== data

def load_data(cfg: TrainConfig, recipe: Recipe | None) -> Data:
    """``DATA/train`` + ``DATA/val`` when present, else a stratified, seeded split of ``DATA``."""
    root = Path(cfg.data)
    common = dict(image_size=cfg.image_size, seed=cfg.seed, check=cfg.check, max_pixels=cfg.max_pixels,
                  output="uint8")  # normalized on the device: 4x less to copy from the workers
    if (root / "train").is_dir():
        full = AugmentedImageFolder(root / "train", recipe, **common)
        if (root / "val").is_dir():
            val_classes = AugmentedImageFolder(root / "val", None, check="none").classes
            missing = [c for c in val_classes if c not in full.classes]
            if missing:
                raise UsageError(f"{root / 'val'}: class folder(s) missing from {root / 'train'}: "
                                 f"{', '.join(missing)}")
            val = AugmentedImageFolder(root / "val", None, classes=full.classes, **common)
            data = Data(full, val, full.classes, f"{root}/train + {root}/val", full.errors + val.errors,
                        full.ignored + val.ignored)
            _require_images(data)
            return data
        layout = f"{root}/train, split with val_split={cfg.val_split}"
    else:
        full = AugmentedImageFolder(root, recipe, **common)
        layout = f"{root}, split with val_split={cfg.val_split}"
    train_idx, val_idx = stratified_split(full.targets, cfg.val_split, cfg.seed)
    val = full.subset(val_idx, recipe=None) if val_idx else None
    data = Data(full.subset(train_idx), val, full.classes, layout, full.errors, full.ignored)
    _require_images(data, full)
    return data


def _require_images(data: Data, full: AugmentedImageFolder | None = None) -> None:
    have = {data.classes[t] for t in (full or data.train).targets}
    empty = [c for c in data.classes if c not in have]
    if empty:
        bad = "; ".join(str(e) for e in data.errors[:3])
        raise UsageError(f"class(es) with no usable training image: {', '.join(empty)}"
                         + (f" (unreadable files: {bad}{' ...' if len(data.errors) > 3 else ''})" if bad else ""))


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


def make_loader(ds: AugmentedImageFolder, cfg: TrainConfig, device: torch.device, *, shuffle: bool,
                order: torch.Generator | None = None, dist: DistContext | None = None) -> DataLoader:
    """A loader whose shuffling uses its own generator (reseeded per epoch by the caller), so
    the order does not depend on the worker count, the global RNG or a resume."""
    sampler = RandomSampler(ds, generator=order) if shuffle else None
    if dist is not None and dist.enabled:  # under torchrun: this rank's shard (augkit.distributed)
        sampler = dist.train_sampler(ds, cfg.seed) if shuffle else dist.eval_sampler(ds)
    n = len(sampler) if sampler is not None else len(ds)
    drop_last = shuffle and n > cfg.batch_size and n % cfg.batch_size == 1  # BatchNorm needs 2+
    return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, shuffle=False, num_workers=cfg.workers,
                      pin_memory=device.type == "cuda", drop_last=drop_last, persistent_workers=cfg.workers > 0,
                      generator=torch.Generator().manual_seed(cfg.seed))


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
    """AdamW with two groups, backbone (0) and head (1); their learning rates are set per epoch."""
    backbone, head = split_params(model)
    return torch.optim.AdamW([{"params": backbone, "name": "backbone"}, {"params": head, "name": "head"}],
                             lr=cfg.lr, weight_decay=cfg.weight_decay)


def epoch_lrs(cfg: TrainConfig, plan: FreezePlan, epoch: int) -> tuple[float, float]:
    """(backbone lr, head lr) for a 0-based epoch: constant during the head-only warm-up, then
    a cosine decay over the remaining epochs; a frozen backbone gets 0."""
    start = plan.warmup_epochs if plan.mode == "finetune" else 0
    if epoch < start:
        return 0.0, cfg.lr
    span = max(1, cfg.epochs - start)
    lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * (epoch - start) / span))
    return (0.0 if plan.phase(epoch) == "head" else lr * plan.backbone_lr_mult), lr


def set_lrs(optimizer: torch.optim.Optimizer, lrs: tuple[float, float]) -> None:
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr


# ====================================================================== one epoch

def model_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device``; uint8 batches are scaled and normalized there (ImageNet mean/std)."""
    x = x.to(device, non_blocking=True)
    if x.dtype != torch.uint8:
        return x
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x.float().div_(255.0) - mean) / std


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, device: torch.device,
                    *, phase: str = "all", scaler: torch.amp.GradScaler | None = None, amp: bool = False,
                    on_batch: Callable[[int, float, float, float], None] | None = None) -> dict:
    """One pass over ``loader``; returns loss, accuracy, images and seconds.

    ``on_batch(images_so_far, mean_loss, accuracy, images_per_second)`` is called after each batch.
    """
    train_mode(model, phase)
    criterion = nn.CrossEntropyLoss()
    total = correct = 0
    loss_sum = 0.0
    start = time.perf_counter()
    for x, y in loader:
        x, y = model_input(x, device), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and amp:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        n = y.numel()
        total += n
        loss_sum += loss.item() * n
        correct += (logits.argmax(1) == y).sum().item()
        if on_batch is not None:
            on_batch(n, loss_sum / total, correct / total, total / max(1e-9, time.perf_counter() - start))
    seconds = time.perf_counter() - start
    return {"loss": loss_sum / max(1, total), "acc": correct / max(1, total), "images": total, "seconds": seconds}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, *, amp: bool = False,
             on_batch: Callable[[int], None] | None = None) -> dict:
    """Loss and accuracy of ``model`` (eval mode) on ``loader``."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    total = correct = 0
    loss_sum = 0.0
    for x, y in loader:
        x, y = model_input(x, device), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(x)
        loss_sum += criterion(logits.float(), y).item()
        correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
        if on_batch is not None:
            on_batch(y.numel())
    return {"loss": loss_sum / max(1, total), "acc": correct / max(1, total), "images": total}


# ====================================================================== run folder

def write_metrics(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in METRIC_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def write_errors(path: Path, errors: list[ImageError]) -> None:
    """One JSON object per left-out file: path, reason, detail (as ``augment``'s errors.jsonl)."""
    rows = [{"path": e.path, "reason": e.reason, "detail": e.detail, "kind": "bad input"} for e in errors]
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def resume_key(cfg: TrainConfig, recipe: Recipe | None) -> dict:
    d = {k: getattr(cfg, k) for k in RESUME_KEYS if k != "recipe_hash"}
    d["weights"] = str(d["weights"])
    d["recipe_hash"] = recipe.hash if recipe is not None else None
    return d


def settings_dict(cfg: TrainConfig, recipe: Recipe | None, data: Data, plan: FreezePlan, device: torch.device,
                  amp: bool) -> dict:
    """Everything the run used, resolved: what ``settings.yaml`` holds."""
    options = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in asdict(cfg).items() if k != "recipe"}
    options["recipe"] = recipe.source if recipe is not None else "none"
    counts = data.counts()
    return {
        "augkit_train": options,
        "resolved": {
            "device": str(device),
            "amp": amp,
            "freeze": {**plan.to_dict(), "description": plan.describe()},
            "optimizer": {"name": "AdamW", "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                          "backbone_lr": f"lr x {plan.backbone_lr_mult:g}",
                          "schedule": "constant during head-only warm-up, then cosine decay per epoch"},
            "data": {"layout": data.layout, "classes": data.classes,
                     "class_to_idx": {c: i for i, c in enumerate(data.classes)},
                     "train_images": len(data.train), "val_images": len(data.val) if data.val is not None else 0,
                     "per_class_train_val": counts, "skipped_files": len(data.errors),
                     "ignored_files": len(data.ignored)},
            "preprocessing": {"image_size": cfg.image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                              "decode_policy": DECODE_POLICY, "resize_policy": RESIZE_POLICY},
            "recipe": ({"name": recipe.name, "source": recipe.source, "hash": recipe.hash, **recipe.resolved()}
                       if recipe is not None else None),
            "versions": versions(),
        },
    }


def model_meta(cfg: TrainConfig, recipe: Recipe | None, classes: list[str]) -> ModelMeta:
    return ModelMeta(arch=cfg.arch, classes=list(classes), class_to_idx={c: i for i, c in enumerate(classes)},
                     image_size=cfg.image_size, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
                     decode_policy=DECODE_POLICY, resize_policy=RESIZE_POLICY,
                     recipe_text=recipe.text if recipe is not None else "",
                     recipe_name=recipe.name if recipe is not None else "", versions=versions())


# ====================================================================== the run

@contextlib.contextmanager
def deterministic(seed: int, device: torch.device):
    """Seed torch and ask for deterministic kernels; restore the caller's global state afterwards."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
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


def _start_state(cfg: TrainConfig, out: Path, key: dict, classes: list[str], say) -> dict | None:
    """The ``last.pt`` to resume from (checked against this run's settings), or None to start fresh."""
    last = out / LAST
    if not cfg.resume:
        existing = [n for n in (LAST, BEST, METRICS) if (out / n).exists()]
        if existing:
            raise UsageError(f"{out}: already holds a run ({', '.join(existing)}); pass --resume to continue it "
                             "or choose another run folder")
        return None
    if not last.is_file():
        say(f"[yellow]--resume[/]: {esc(str(out))} has no {LAST} yet: starting from epoch 1")
        return None
    ckpt = load_checkpoint(last)
    saved = ckpt.get("settings", {})
    diff = [f"{k}: run has {saved.get(k)!r}, now {key[k]!r}" for k in RESUME_KEYS if saved.get(k) != key[k]]
    if ckpt["meta"]["classes"] != classes:
        diff.append(f"classes: run has {ckpt['meta']['classes']}, data now has {classes}")
    if diff:
        raise UsageError(f"{last}: cannot resume with different settings ({'; '.join(diff)}). Use the original "
                         "settings, or start a new run folder (--weights {out} starts from its weights)")
    return ckpt


def train(cfg: TrainConfig, console: Console | None = None) -> TrainResult:
    """Run (or resume) a training run; see the module docstring for what it writes.

    Everything that can be wrong (options, data, weights, an existing run) is found before the
    run folder is created or touched.
    """
    console = console or Console(stderr=True, highlight=False)
    say = console.print
    cfg.validate()
    device = resolve_device(cfg.device)
    dist = dist_setup(device)  # DDP when launched by torchrun (augkit.distributed), else a no-op
    device = dist.device
    if not dist.is_main:  # only rank 0 prints and writes the run folder
        console, cfg = Console(quiet=True), replace(cfg, progress=False)
        say = console.print
    if cfg.workers is None:
        cfg = replace(cfg, workers=default_workers(device.type))
    amp = cfg.amp and device.type == "cuda"
    if cfg.amp and not amp:
        say(f"[yellow]--amp[/] only has an effect on cuda; training on {device.type} in float32")
    recipe = _resolve_recipe(cfg.recipe)
    data = load_data(cfg, recipe)
    out, key = Path(cfg.out), resume_key(cfg, recipe)
    state = _start_state(cfg, out, key, data.classes, say)
    with deterministic(cfg.seed, device), opencv_threads(1):
        if state:  # the weights come from last.pt: no download, no weights file needed
            model, plan = build_model(cfg.arch, len(data.classes)), FreezePlan(**state["plan"])
        else:
            model, pretrained = build_start_model(cfg.arch, len(data.classes), str(cfg.weights))
            plan = choose_freeze(cfg.freeze, len(data.train), len(data.classes), cfg.epochs, pretrained)
        _announce(say, cfg, data, plan, out, device)
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_errors(out / ERRORS, data.errors)
            settings = settings_dict(cfg, recipe, data, plan, device, amp)
            if dist.enabled:
                settings["resolved"]["distributed"] = {"world_size": dist.world_size, "backend": dist.backend}
            atomic_write_text(out / SETTINGS, yaml.safe_dump(settings, sort_keys=False, allow_unicode=True))
        optimizer = make_optimizer(model, cfg)
        scaler = torch.amp.GradScaler("cuda", enabled=amp) if device.type == "cuda" else None
        history, best = _restore(state, model, optimizer, scaler)
        if state:
            say(f"resuming {esc(str(out / LAST))} after epoch {state['epoch']} of {cfg.epochs}")
        model.to(device)
        meta = model_meta(cfg, recipe, data.classes)
        start = len(history)
        order = torch.Generator()
        train_loader = make_loader(data.train, cfg, device, shuffle=True, order=order, dist=dist)
        val_loader = make_loader(data.val, cfg, device, shuffle=False, dist=dist) if data.val is not None else None
        for epoch in range(start, cfg.epochs):
            row = _run_epoch(epoch, cfg, plan, model, optimizer, scaler, amp, data, train_loader, val_loader, order,
                             device, console, dist=dist)
            history.append(row)
            if _better(row, best):
                best = dict(row)
                if dist.is_main:
                    save_checkpoint(out / BEST, model, meta, epoch=epoch + 1, metrics=row)
            if dist.is_main:
                save_checkpoint(out / LAST, model, meta, epoch=epoch + 1, metrics=row,
                                optimizer=optimizer.state_dict(),
                                scaler=scaler.state_dict() if scaler is not None else None, history=history,
                                best=best, settings=key, plan=plan.to_dict())
                write_metrics(out / METRICS, history)
                plot_curves(history, out / CURVES)
        if start == cfg.epochs:
            say(f"{esc(str(out))}: all {cfg.epochs} epochs are already done")
            if dist.is_main:
                write_metrics(out / METRICS, history)
                plot_curves(history, out / CURVES)
    dist.close()
    result = TrainResult(out, len(history), int(best["epoch"]), best, history[-1], history, plan, str(device),
                         data.errors, start)
    say(summary_table(result))
    return result


def _announce(say, cfg: TrainConfig, data: Data, plan: FreezePlan, out: Path, device: torch.device) -> None:
    say(f"data: {len(data.train)} train / {len(data.val) if data.val else 0} val images, "
        f"{len(data.classes)} classes ({esc(data.layout)})")
    if data.errors:
        say(f"[yellow]warning:[/] {len(data.errors)} file(s) left out (listed in {esc(str(out / ERRORS))}):")
        for e in data.errors[:10]:
            say(f"  {esc(str(e))}")
        if len(data.errors) > 10:
            say(f"  ... and {len(data.errors) - 10} more")
    if data.val is None:
        say("[yellow]note:[/] no validation images: best.pt is the epoch with the lowest training loss")
    say(f"freeze: [bold]{plan.describe()}[/] - {esc(plan.reason)}")
    say(f"device: {device}, {cfg.workers} loader worker(s), batch {cfg.batch_size}, {cfg.epochs} epochs")


def _restore(state: dict | None, model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler | None) -> tuple[list[dict], dict]:
    """Load a resumed run's weights, optimizer and scaler; returns (history, best row)."""
    if not state:
        return [], {}
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return list(state["history"]), dict(state.get("best") or {})


def _run_epoch(epoch, cfg, plan, model, optimizer, scaler, amp, data, train_loader, val_loader, order, device,
               console, dist: DistContext | None = None) -> dict:
    phase = plan.phase(epoch)
    set_phase(model, phase)
    dist = dist or DistContext()
    net = dist.wrap(model)  # DistributedDataParallel under torchrun (rewrapped when the phase changes)
    dist.set_epoch(train_loader, epoch)
    lrs = epoch_lrs(cfg, plan, epoch)
    set_lrs(optimizer, lrs)
    data.train.set_epoch(epoch)
    order.manual_seed(derive_seed(cfg.seed, "order", epoch, salt="train"))
    n_batches = len(train_loader)
    with _progress(console, cfg.progress) as progress:
        task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs} {phase}", total=n_batches, stats="")

        def on_batch(n, loss, acc, ips):
            progress.update(task, advance=1, stats=f"loss {loss:.4f}  acc {acc:6.1%}  {ips:6.0f} img/s")

        tr = dist.reduce(train_one_epoch(net, train_loader, optimizer, device, phase=phase, scaler=scaler, amp=amp,
                                         on_batch=on_batch))
        va = None
        if val_loader is not None:
            vtask = progress.add_task("  validate", total=len(val_loader), stats="")
            va = dist.reduce(evaluate(model, val_loader, device, amp=amp,
                                      on_batch=lambda n: progress.update(vtask, advance=1)))
            progress.update(vtask, stats=f"loss {va['loss']:.4f}  acc {va['acc']:6.1%}")
    seconds = tr["seconds"]
    return {"epoch": epoch + 1, "phase": phase, "train_loss": tr["loss"], "train_acc": tr["acc"],
            "val_loss": va["loss"] if va else None, "val_acc": va["acc"] if va else None,
            "lr_backbone": lrs[0], "lr_head": lrs[1], "seconds": round(seconds, 3),
            "images_per_s": round(tr["images"] / max(1e-9, seconds), 1)}


def _better(row: dict, best: dict) -> bool:
    if not best:
        return True
    if row["val_acc"] is None:
        return row["train_loss"] < best["train_loss"]
    return (row["val_acc"], -row["val_loss"]) > (best["val_acc"], -best["val_loss"])


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                    TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=console, disable=not enabled)


def summary_table(result: TrainResult) -> Table:
    t = Table(title=f"augkit train: {result.run_dir}", title_justify="left")
    t.add_column("")
    t.add_column("best (epoch %d)" % result.best_epoch, justify="right")
    t.add_column("last (epoch %d)" % result.last["epoch"], justify="right")

    def f(v, pct=False):
        return "-" if v is None else (f"{v:.1%}" if pct else f"{v:.4f}")

    for key, pct in (("train_loss", False), ("train_acc", True), ("val_loss", False), ("val_acc", True)):
        t.add_row(key.replace("_", " "), f(result.best.get(key), pct), f(result.last.get(key), pct))
    secs = sum(r["seconds"] for r in result.history)
    ips = sum(r["images_per_s"] * r["seconds"] for r in result.history) / max(1e-9, secs)
    t.add_row("train time", "", f"{secs:.1f} s over {len(result.history)} epochs")
    t.add_row("throughput", "", f"{ips:.0f} img/s on {result.device}")
    t.add_row("freeze", "", result.plan.mode)
    if result.skipped:
        t.add_row("skipped files", "", f"{len(result.skipped)} (see {ERRORS})")
    return t
