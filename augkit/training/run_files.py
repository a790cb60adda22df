"""What a training run writes to its run folder, and when.

* ``metrics.csv`` after every epoch (a few hundred bytes);
* ``best.pt`` and ``last.pt`` (weights + optimizer + history, ~130 MB for a ResNet-18) on a
  budget: after the first epoch, then whenever the time since the last write is at least
  :data:`FLUSH_FACTOR` times what that write took (so checkpoints cost at most ~1/FLUSH_FACTOR of
  the run), and after the last epoch. Measured here: last.pt 0.24 s, best.pt 0.07 s, against
  ~1.2 s epochs on 500 digits at 32 px: writing both every epoch cost ~25% of such a run. Only
  the serializing (~0.15 s for both) stops training: a background thread writes the files while
  the next epoch runs (see :class:`CheckpointWriter`).
  A run killed in between resumes (``--resume``) from the last written epoch and recomputes the
  epochs after it exactly (the order and augmentations depend only on seed and epoch);
  ``best.pt`` is written before ``last.pt``, so the two always agree.
* ``curves.png`` when the run ends, finished or interrupted (drawing it every epoch bought nothing).
* ``.augkit.lock`` while the run lasts (:func:`run_dir_lock`): one run per folder at a time.

Every write is atomic; an OS error (disk full, read-only folder) ends the run with one line
naming the path and the error (:class:`RunDirError`, exit code 1).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from augkit.errors import AugkitError, ImageError
from augkit.io.fileio import atomic_write_bytes, atomic_write_text
from augkit.io.images import DECODE_POLICY
from augkit.io.preprocess import IMAGENET_MEAN, IMAGENET_STD, RESIZE_POLICY
from augkit.models.checkpoint import BEST, LAST, HasStateDict, ModelMeta, checkpoint_bytes, versions
from augkit.offline.dst import locked
from augkit.training.config import CURVES, ERRORS, METRICS, SETTINGS  # noqa: F401  (re-exported)
from augkit.training.distributed import is_main
from augkit.training.plot import plot_curves

METRIC_COLUMNS = (
    "epoch",
    "phase",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr_backbone",
    "lr_head",
    "seconds",
    "images_per_s",
    "lr_first",  # the head's learning rate at the epoch's first and last step
    "lr_last",
    "ema_val_loss",  # --ema: the moving average's validation
    "ema_val_acc",
    "weights",  # which weights the epoch offers for best.pt: raw, or ema when the average validated better
    "data_wait",  # the share of the epoch the step waited for data (augkit.training.feed)
    "loader_img_s",
    "model_img_s",
)
#: how train_acc is counted when batches are mixed (settings.yaml and the summary say so)
MIXED_ACC = "against each mixed image's dominant label (the larger share)"
FLUSH_FACTOR = 20  # checkpoints are written when the time since the last write >= 20x its cost


class RunDirError(AugkitError):
    """The run folder cannot be written (disk full, read-only, not a folder): exit code 1."""


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OS error while writing ``path`` into a one-line :class:`RunDirError`."""
    try:
        yield
    except OSError as exc:
        raise RunDirError(f"cannot write {exc.filename or path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def run_dir_lock(out: Path) -> Iterator[None]:
    """Hold RUN_DIR's lock (``RUN_DIR/.augkit.lock``, as augment's DST) for a whole run: a second
    run into the same folder is refused (a :class:`~augkit.errors.UsageError`, exit 2, naming the
    folder) instead of replacing the first one's model. Under torchrun only rank 0 locks: the
    ranks share the folder. A run refused before writing leaves no folder behind."""
    if not is_main():
        yield
        return
    with locked(out, what="RUN_DIR"):
        yield


def make_run_dir(out: Path) -> None:
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)


def write_text(path: Path, text: str) -> None:
    with writing(path):
        atomic_write_text(path, text)


def write_metrics(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in METRIC_COLUMNS})
    write_text(path, buf.getvalue())


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def write_errors(path: Path, errors: list[ImageError]) -> None:
    """One JSON object per left-out file: path, reason, detail (as ``augment``'s errors.jsonl)."""
    rows = [{"path": e.path, "reason": e.reason, "detail": e.detail, "kind": "bad input"} for e in errors]
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_curves(out: Path, history: list[dict], best_epoch: int | None = None, stopped: str | None = None) -> None:
    if history:
        with writing(out / CURVES):
            plot_curves(history, out / CURVES, best_epoch=best_epoch, stopped=stopped)


class _Weights:
    """A state dict that :func:`save_checkpoint` can save like a model (a copy of the best epoch)."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


class CheckpointWriter:
    """Writes ``best.pt`` and ``last.pt`` on the time budget described in the module docstring.

    The checkpoints are serialized here, between epochs (a snapshot: later steps cannot change
    them), and written to disk (write, fsync, rename) by a background thread while the next epoch
    trains; one write is in flight at most. :meth:`close` waits for it and reports its error: a
    finished run's files are all on disk, and a failed write ends the run (RunDirError) at the
    next checkpoint or at the end."""

    def __init__(self, out: Path, meta: ModelMeta, extra: dict, enabled: bool = True):
        self.out, self.meta, self.extra, self.enabled = out, meta, extra, enabled
        self._best: tuple[HasStateDict, dict, int] | None = None  # weights, metrics, epoch not yet on disk
        self._last_end: float | None = None
        self._cost = 0.0  # seconds the last checkpoint took: serializing + writing
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self.writes = 0

    def epoch_done(
        self,
        model: torch.nn.Module,
        optimizer,
        scaler,
        history: list[dict],
        best: dict,
        improved: bool,
        final: bool,
        best_model: torch.nn.Module | None = None,
        last_extra: dict | None = None,
    ) -> None:
        """Call after each epoch (``improved``: this epoch is the new best). ``best_model``: the
        weights best.pt takes when they are not ``model``'s (``--ema``); ``last_extra``: more for
        last.pt (the EMA's state)."""
        if not self.enabled:
            return
        epoch = int(history[-1]["epoch"])
        now = time.perf_counter()
        due = final or self._last_end is None or now - self._last_end >= FLUSH_FACTOR * self._cost
        if improved:  # written now from the model itself, or later from a copy of this epoch's weights
            src = best_model if best_model is not None else model
            net = getattr(src, "module", src)
            weights = net if due else _Weights({k: v.detach().clone() for k, v in net.state_dict().items()})
            self._best = (weights, dict(history[-1]), epoch)
        if due:
            write_s = self.wait()
            self._cost = write_s + self._flush(model, optimizer, scaler, history, best, epoch, last_extra or {})
            self._last_end = time.perf_counter()
            if final:
                self._cost += self.wait()

    def _flush(self, model, optimizer, scaler, history, best, epoch, last_extra: dict) -> float:
        """Serialize both checkpoints now and hand them to the writer thread; the seconds it took."""
        t0 = time.perf_counter()
        files = []
        if self._best is not None:  # best.pt before last.pt, so the two always agree
            weights, metrics, best_epoch = self._best
            files.append((self.out / BEST, checkpoint_bytes(weights, self.meta, epoch=best_epoch, metrics=metrics)))
            self._best = None
        files.append(
            (
                self.out / LAST,
                checkpoint_bytes(
                    model,
                    self.meta,
                    epoch=epoch,
                    metrics=history[-1],
                    optimizer=optimizer.state_dict(),
                    scaler=scaler.state_dict() if scaler is not None else None,
                    history=history,
                    best=best,
                    **self.extra,
                    **last_extra,
                ),
            )
        )
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="augkit-checkpoint")
        self._pending = self._pool.submit(_write_files, files)
        self.writes += 1
        return time.perf_counter() - t0

    def wait(self) -> float:
        """Wait for the write in flight; its seconds (0 if none). Raises its RunDirError."""
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else 0.0

    def close(self) -> None:
        """Wait for the write in flight (also when the run is interrupted) and stop the thread."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


def _write_files(files: list[tuple[Path, bytes]]) -> float:
    t0 = time.perf_counter()
    for path, data in files:
        with writing(path):
            atomic_write_bytes(path, data)
    return time.perf_counter() - t0


def settings_dict(cfg, recipe, data, plan, device: torch.device, precision, threads: int) -> dict:
    """Everything the run used, resolved: what ``settings.yaml`` holds."""
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "recipe"}
    options["recipe"] = recipe.source if recipe is not None else "none"
    return {
        "augkit_train": options,
        "resolved": {
            "device": str(device),
            "amp": precision.name != "fp32",
            "precision": precision.to_dict(),
            "cpu": {"threads": threads, "loader_workers": cfg.workers},
            "freeze": {**plan.to_dict(), "description": plan.describe()},
            "optimizer": {
                "name": "AdamW",
                "lr": cfg.lr,
                "weight_decay": cfg.weight_decay,
                "backbone_lr": f"lr x {plan.backbone_lr_mult:g}",
                "schedule": cfg.schedule,  # the train loop writes the resolved schedule here
            },
            "loss": _loss_block(cfg, recipe),
            "early_stopping": (
                {
                    "patience": cfg.patience,
                    "metric": "val_acc (ties: val_loss)"
                    if data.val is not None
                    else "train_loss (no validation images)",
                }
                if cfg.patience is not None
                else None
            ),
            "data": data.describe(),
            "preprocessing": {
                "image_size": cfg.image_size,
                "mean": list(IMAGENET_MEAN),
                "std": list(IMAGENET_STD),
                "decode_policy": DECODE_POLICY,
                "resize_policy": RESIZE_POLICY,
            },
            "recipe": (
                {"name": recipe.name, "source": recipe.source, "hash": recipe.hash, **recipe.resolved()}
                if recipe is not None
                else None
            ),
            "versions": versions(),
        },
    }


def _loss_block(cfg, recipe) -> dict:
    """How the training loss and train_acc are computed (mixed batches change both)."""
    batch = recipe.batch if recipe is not None else None
    if batch is None:
        return {"train": "cross entropy", "label_smoothing": cfg.label_smoothing, "train_acc": "against the true label"}
    return {
        "train": "soft-target cross entropy on mixed batches (recipe batch: section)",
        "label_smoothing": cfg.label_smoothing,
        "batch": batch.to_yaml(),
        "train_acc": MIXED_ACC,
        "validation": "plain images, cross entropy without smoothing",
    }
