"""``augkit train DATA -o RUN_DIR``: fine-tune a torchvision ResNet, augmenting online with a recipe.

This module owns what the user sees (progress bars, the start-up lines, the summary table);
:func:`augkit.training.loop.train` does the work and reports through callbacks. It imports no torch at
its top level, so ``augkit --help`` stays instant.
"""

from __future__ import annotations

import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape as esc
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from augkit.commands._common import cli_errors, err, interrupted_exit
from augkit.errors import EXIT_SKIPPED, UsageError
from augkit.limits import DEFAULT_MAX_PIXELS
from augkit.training.config import (
    CHECKS,
    DECODES,
    DEFAULT_EMA,
    DEFAULT_LR,
    DEFAULT_SCHEDULE,
    DEVICES,
    ERRORS,
    PRECISIONS,
    WORKERS_RULE,
    TrainCallbacks,
    TrainConfig,
    parse_lr,
)
from augkit.training.feed import advice, from_rows
from augkit.training.freeze import FREEZE_CHOICES, WARMUP_FRACTION
from augkit.training.schedule import ONECYCLE_WARMUP, SCHEDULES

Freeze = Enum("Freeze", {v: v for v in FREEZE_CHOICES}, type=str)  # type: ignore[misc]  # members computed: mypy cannot follow
Device = Enum("Device", {v: v for v in DEVICES}, type=str)  # type: ignore[misc]  # members computed: mypy cannot follow
Check = Enum("Check", {v: v for v in CHECKS}, type=str)  # type: ignore[misc]  # members computed: mypy cannot follow
Decode = Enum("Decode", {v: v for v in DECODES}, type=str)  # type: ignore[misc]  # members computed: mypy cannot follow
PrecisionChoice = Enum("PrecisionChoice", {v: v for v in PRECISIONS}, type=str)  # type: ignore[misc]  # members computed: mypy cannot follow
ScheduleChoice = Enum("ScheduleChoice", {v: v for v in SCHEDULES}, type=str)  # type: ignore[misc]  # members computed: mypy cannot follow


@cli_errors
def command(
    data: Path = typer.Argument(
        ..., metavar="DATA", help="DATA/<class>/<image>, or DATA/train/<class>/... and DATA/val/<class>/..."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Run folder to write (RUN_DIR)."),
    recipe: str = typer.Option(
        "default", "--recipe", "-r", help="Built-in recipe name, a recipe .yaml file, or none (no augmentation)."
    ),
    arch: str = typer.Option(
        "resnet18",
        "--arch",
        help="Any torchvision classifier (list: augkit models), e.g. "
        "resnet18, convnext_tiny, efficientnet_b0, vit_b_16 (224 px); timm/<name> with "
        'pip install "augkit\\[timm]".',
    ),
    weights: str = typer.Option(
        "imagenet",
        "--weights",
        help="imagenet (torchvision's, downloaded), none (random init), or PATH: a "
        "torchvision state-dict file or an earlier augkit run folder/checkpoint.",
    ),
    epochs: int = typer.Option(10, "--epochs", "-e", min=1),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1),
    lr: str = typer.Option(
        f"{DEFAULT_LR:g}",
        "--lr",
        help="Peak AdamW learning rate of the head (the backbone gets less when fine-tuning pretrained "
        "weights), or auto: a short learning-rate range test on the training data picks it (fastai's "
        "lr_find: a tenth of the rate at the smoothed loss's lowest point; the sweep is drawn in "
        "RUN_DIR/lr_find.png).",
    ),
    schedule: ScheduleChoice = typer.Option(
        DEFAULT_SCHEDULE,
        "--schedule",
        help="Learning rate per step: onecycle (torch's OneCycleLR), cosine (per step, to 0), step (x0.1 "
        "at 1/2 and 3/4), constant, or cosine-epoch (one cosine step per epoch). With --freeze finetune "
        "it starts after the head-only epochs.",
    ),
    warmup: Optional[float] = typer.Option(
        None,
        "--warmup",
        min=0.0,
        help=f"Linear warm-up, in epochs (fractions allowed), before the schedule \\[default: 0; onecycle "
        f"rises over {ONECYCLE_WARMUP:.0%} of its steps].",
    ),
    ema: float = typer.Option(
        DEFAULT_EMA,
        "--ema",
        help="Also keep an exponential moving average of the weights with this decay (timm's ModelEmaV3 "
        "with decay warm-up), validated each epoch: best.pt is whichever is better. 0: none.",
    ),
    weight_decay: float = typer.Option(1e-2, "--weight-decay", min=0.0, help="AdamW weight decay."),
    image_size: int = typer.Option(224, "--image-size", min=16, help="Training and prediction size (square)."),
    val_split: float = typer.Option(
        0.2,
        "--val-split",
        help="Share of each class held out for validation when "
        "DATA has no val folder (stratified, seeded); 0: no validation.",
    ),
    freeze: Freeze = typer.Option(
        "auto",
        "--freeze",
        help=f"auto: finetune with pretrained weights (it beat a frozen backbone at every "
        "size measured, 5 to 100 images per class), none without; finetune: the head "
        f"alone for {WARMUP_FRACTION:.0%} of the epochs, then all layers; head: backbone "
        "frozen; none: all layers from the start.",
    ),
    seed: int = typer.Option(0, "--seed", "-s", help="Decides initialisation, data order, split and augmentation."),
    device: Device = typer.Option("auto", "--device", help="auto picks cuda, then mps, then cpu."),
    workers: Optional[int] = typer.Option(
        None,
        "--workers",
        "-w",
        min=0,
        help=f"DataLoader worker processes; 0 loads in the main process \\[default: {WORKERS_RULE}].",
    ),
    threads: Optional[int] = typer.Option(
        None,
        "--threads",
        min=1,
        help="CPU threads of the training process \\[default: usable cores minus loader workers, at least 1].",
    ),
    precision: PrecisionChoice = typer.Option(
        "auto",
        "--precision",
        help="auto: bf16 autocast + channels_last on CPUs with native "
        "bfloat16 at image sizes >= 96, else fp32; on cuda bf16 where native "
        "(compute capability >= 8.0), else fp32 (fp16 with --amp), conv nets "
        "channels_last under autocast. fp32, bf16, fp16: as named.",
    ),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision (float16), on cuda only."),
    cache: bool = typer.Option(
        False,
        "--cache",
        help="Decode and resize every image once into a memory-mapped "
        "store (RUN_DIR/cache), so later epochs and runs skip decoding.",
    ),
    cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir", help="Keep the --cache store in this folder (shared between runs; implies --cache)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue RUN_DIR from its last.pt."),
    label_smoothing: float = typer.Option(
        0.0,
        "--label-smoothing",
        help="Label smoothing E (0 <= E < 1) of the training loss; mixup/cutmix "
        "targets (a recipe's batch: section) are smoothed too. Validation is not.",
    ),
    patience: Optional[int] = typer.Option(
        None,
        "--patience",
        min=1,
        help="Stop early when the metric that picks best.pt (val_acc, or "
        "train_loss without validation) has not improved for N epochs.",
    ),
    check: Check = typer.Option(
        "header",
        "--check",
        help="Check every file before training: header (signature, size, end marker), full (decode) or none.",
    ),
    decode: Decode = typer.Option(
        "cpu",
        "--decode",
        help="Where training images are decoded and augmented. cpu: in the loader workers. gpu: the workers only "
        "plan each sample; JPEGs are decoded by nvJPEG on the CUDA device and warped there in one batched "
        "grid_sample (needs CUDA; recipes of geometric steps then color/linear/GaussianBlur; not with --cache). "
        "Validation stays on the CPU. docs/training.md, Decoding on the GPU.",
    ),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help="Reject images with more pixels (read from the header)."
    ),
    nproc: int = typer.Option(
        1,
        "--nproc",
        min=1,
        help="Train with DistributedDataParallel in N processes on "
        "this machine (relaunches itself under torchrun; one GPU each on cuda, gloo on "
        "cpu); --batch-size is per process. Multi-node: run torchrun yourself (README, Scaling out).",
    ),
    test: Optional[Path] = typer.Option(
        None,
        "--test",
        help="A held-out folder (TEST/<class>/<image>, never trained or validated on): the best weights are "
        "evaluated on it at the end (plain and with the run's TTA), written to RUN_DIR/test_report.json.",
    ),
) -> None:
    """Train an image classifier on DATA with a recipe's augmentations applied online.

    RUN_DIR gets: best.pt and last.pt (safe checkpoints with the classes, image size, normalization, decode policy and recipe); settings.yaml (every resolved setting); metrics.csv (one row per epoch); curves.png; errors.jsonl (files left out).

    Exit codes: 0 done; 1 failed (e.g. RUN_DIR not writable); 2 bad options or data; 3 done, but some files were left out.
    """
    config = TrainConfig(
        data=data,
        out=output,
        recipe=recipe,
        arch=arch,
        weights=weights,
        epochs=epochs,
        batch_size=batch_size,
        lr=parse_lr(lr),
        weight_decay=weight_decay,
        image_size=image_size,
        val_split=val_split,
        freeze=freeze.value,
        seed=seed,
        device=device.value,
        workers=workers,
        threads=threads,
        precision=precision.value,
        amp=amp,
        cache=cache or cache_dir is not None,
        cache_dir=cache_dir,
        resume=resume,
        check=check.value,
        decode=decode.value,
        max_pixels=max_pixels,
        label_smoothing=label_smoothing,
        patience=patience,
        schedule=schedule.value,
        warmup=warmup,
        ema=ema,
    )
    # deferred: augkit.training.distributed imports torch (seconds); `augkit --help` must not pay for it
    from augkit.training.distributed import launch, relaunch_args, under_torchrun

    if test is not None and not test.is_dir():
        raise UsageError(f"--test {test}: not a folder (give TEST/<class>/<image>, held out from DATA)")
    if nproc > 1 and not under_torchrun():  # the same command line in N processes, minus --nproc
        config.validate()
        code = launch(nproc, relaunch_args(sys.argv[1:]))
        if code == 0:
            held_out(data, test, output, device.value)
        raise typer.Exit(code=EXIT_SKIPPED if code == 0 and _skipped_files(output) else code)
    try:
        result = train(config, console=err)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): exit 130 / 143
        if under_torchrun():
            raise typer.Exit(code=130) from None
        raise interrupted_exit(exc, resume_hint(output, sys.argv[1:])) from None
    if not under_torchrun():
        held_out(data, test, output, device.value)
    if result.skipped and not under_torchrun():  # torchrun takes any non-zero exit for a failure
        raise typer.Exit(code=EXIT_SKIPPED)


TEST_REPORT = "test_report.json"


def held_out(data: Path, test: Path | None, run_dir: Path, device: str) -> None:
    """After training: evaluate the best weights on ``--test``; without it, name an unused
    ``DATA/test`` and say how to use it (train reads DATA/train + DATA/val, never DATA/test)."""
    if test is None:
        unused = Path(data) / "test"
        if (Path(data) / "train").is_dir() and unused.is_dir():
            err.print(
                "[yellow]note:[/] "
                + esc(
                    f"{unused} was not used (train reads {Path(data) / 'train'} and a val folder or split). "
                    f"Evaluate the best weights on it: add --test {unused} to this command (at the end of "
                    f"training), or run augkit evaluate {run_dir} {unused}"
                ),
                soft_wrap=True,
            )
        return
    from augkit.infer.evaluate import evaluate, write_report  # deferred: imports torch

    rep = evaluate(run_dir, test, device=device, workers=0)
    write_report(rep, Path(run_dir) / TEST_REPORT)
    acc, n = rep["accuracy"], rep["counts"]["evaluated"]
    err.print(
        esc(
            f"test {test}: {n} held-out images, accuracy {acc['plain']:.2%} plain, {acc['tta']:.2%} with TTA "
            f"{rep['tta']['spec']} ({rep['tta']['source']}); report: {Path(run_dir) / TEST_REPORT}"
        ),
        soft_wrap=True,
    )


def train(config: TrainConfig, console: Console | None = None) -> Any:
    """:func:`augkit.training.loop.train` with this command's display on ``console`` (stderr by default);
    only the main process of a distributed run prints."""
    # deferred: augkit.training.loop imports torch, torchvision and albumentations
    from augkit.training.distributed import is_main
    from augkit.training.loop import train as run_training

    console = console or err
    reporter = Reporter(console, config.progress)
    try:
        result = run_training(config, reporter)
    finally:
        reporter.stop()
    if is_main():
        console.print(summary_table(result))
        feed = from_rows(result.history, result.workers)
        gpu_decode = str(result.device).startswith("cuda") and config.decode == "cpu" and not config.cache
        tip = (
            advice(feed, cache=config.cache, image_size=config.image_size, gpu_decode=gpu_decode)
            if feed is not None
            else None
        )
        if tip:
            console.print(f"[yellow]{esc(tip)}[/yellow]")
    return result


def resume_hint(run_dir: Path, argv: list[str]) -> str:
    """What to type after a Ctrl-C: the same command with ``--resume`` once an epoch was saved
    (without it the run folder is refused), else the same command."""
    args = list(argv) + ([] if "--resume" in argv or not (Path(run_dir) / "last.pt").is_file() else ["--resume"])
    command = "augkit " + shlex.join(args)
    if (Path(run_dir) / "last.pt").is_file():
        return f"the finished epochs are in {Path(run_dir) / 'last.pt'}; resume with: {command}"
    return f"no epoch was finished; start again with: {command}"


def _skipped_files(run_dir: Path) -> bool:
    """Whether the run that rank 0 wrote left files out (its errors.jsonl is not empty)."""
    errors = Path(run_dir) / ERRORS
    return errors.is_file() and errors.stat().st_size > 0


class Reporter(TrainCallbacks):
    """The command's display: start-up lines, one progress bar per epoch, notes in yellow."""

    def __init__(self, console: Console, progress: bool):
        self.console, self.enabled = console, progress
        self._progress: Any = None
        self._task = self._vtask = None

    def on_note(self, text: str) -> None:
        warn = text.startswith(("warning", "--amp", "--resume"))
        self.console.print(f"[yellow]{esc(text)}[/]" if warn else esc(text), soft_wrap=True)

    def on_start(self, info: Any) -> None:
        say, data, cfg = self.console.print, info.data, info.cfg
        say(
            f"data: {len(data.train)} train / {len(data.val) if data.val else 0} val images, "
            f"{len(data.classes)} classes ({esc(data.layout)})"
        )
        if data.errors:
            say(f"[yellow]warning:[/] {len(data.errors)} file(s) left out (listed in {esc(str(info.out / ERRORS))}):")
            for e in data.errors[:10]:
                say(f"  {esc(str(e))}")
            if len(data.errors) > 10:
                say(f"  ... and {len(data.errors) - 10} more")
        if data.val is None:
            say("[yellow]note:[/] no validation images: best.pt is the epoch with the lowest training loss")
        say(f"freeze: [bold]{info.plan.describe()}[/] - {esc(info.plan.reason)}")
        say(
            f"device: {info.device}, {cfg.workers} loader worker(s), {info.threads} thread(s), batch "
            f"{cfg.batch_size}, {cfg.epochs} epochs"
        )
        say(
            f"precision: {info.precision.name}{' + channels_last' if info.precision.channels_last else ''} "
            f"({esc(info.precision.reason)})"
        )

    def on_epoch_start(self, epoch: int, epochs: int, phase: str, batches: int, val_batches: int) -> None:
        self.stop()
        if not self.enabled:
            return
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self._progress.start()
        self._task = self._progress.add_task(f"epoch {epoch}/{epochs} {phase}", total=batches, stats="")
        self._vtask = self._progress.add_task("  validate", total=val_batches, stats="") if val_batches else None

    def on_batch(self, images: int, loss: float, acc: float, images_per_s: float) -> None:
        if self._progress is not None:
            self._progress.update(
                self._task, advance=1, stats=f"loss {loss:.4f}  acc {acc:6.1%}  {images_per_s:6.0f} img/s"
            )

    def on_val_batch(self, images: int) -> None:
        if self._progress is not None and self._vtask is not None:
            self._progress.update(self._vtask, advance=1)

    def on_epoch_end(self, row: dict) -> None:
        if self._progress is not None and self._vtask is not None and row["val_acc"] is not None:
            self._progress.update(self._vtask, stats=f"loss {row['val_loss']:.4f}  acc {row['val_acc']:6.1%}")
        self.stop()

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def engine_line(device: str) -> str:
    """How the run ran: one process, or DistributedDataParallel under torchrun (``--nproc N``)."""
    from augkit.training.distributed import env_world_size, under_torchrun  # deferred: imports torch

    if not under_torchrun():
        return "one process (--nproc N: DistributedDataParallel in N processes)"
    backend = "nccl" if device.startswith("cuda") else "gloo"
    return f"distributed: {env_world_size()} processes (torchrun, DistributedDataParallel, {backend})"


def summary_table(result: Any) -> Table:
    """Best and last epoch, time, throughput and settings of a finished run."""
    t = Table(title=f"augkit train: {result.run_dir}", title_justify="left")
    t.add_column("")
    t.add_column(f"best (epoch {result.best_epoch})", justify="right")
    t.add_column(f"last (epoch {result.last['epoch']})", justify="right")

    def f(v, pct=False):
        return "-" if v is None else (f"{v:.1%}" if pct else f"{v:.4f}")

    for key, pct in (("train_loss", False), ("train_acc", True), ("val_loss", False), ("val_acc", True)):
        name = key.replace("_", " ") + (" (vs dominant mixed label)" if key == "train_acc" and result.mixed else "")
        t.add_row(name, f(result.best.get(key), pct), f(result.last.get(key), pct))
    secs = sum(r["seconds"] for r in result.history)
    ips = sum(r["images_per_s"] * r["seconds"] for r in result.history) / max(1e-9, secs)
    t.add_row("train time", "", f"{secs:.1f} s over {len(result.history)} epochs")
    t.add_row(
        "throughput",
        "",
        f"{ips:.0f} img/s on {result.device} ({result.precision}, {result.threads} "
        f"thread(s), {result.workers} worker(s))",
    )
    t.add_row("engine", "", engine_line(str(result.device)))
    feed = from_rows(result.history, result.workers)
    if feed is not None:
        loader = f"{'>= ' if feed.loader_at_least else ''}{feed.loader_img_s:.0f}"
        t.add_row(
            "waiting for data",
            "",
            f"{feed.data_wait:.0%} of the step time (loader {loader} img/s, model {feed.model_img_s:.0f} img/s)",
        )
    t.add_row("freeze", "", result.plan.mode)
    lr = getattr(result, "lr", None)
    if lr is not None:
        found = getattr(result, "lr_find", None)
        rule = f" (--lr auto, rule {found['rule'].split(' ')[0]}; lr_find.png)" if found else ""
        t.add_row("learning rate", "", f"{lr:.3g}{esc(rule)}")
        t.add_row("schedule", "", esc(getattr(result, "schedule", "")))
    if any(r.get("ema_val_acc") is not None for r in result.history):
        which = getattr(result, "best_weights", "raw")
        t.add_row("best.pt weights", "", "EMA (moving average)" if which == "ema" else "raw (EMA validated worse)")
    t.add_row("stopped", "", result.stopped)
    if result.skipped:
        t.add_row("skipped files", "", f"{len(result.skipped)} (see {ERRORS})")
    return t
