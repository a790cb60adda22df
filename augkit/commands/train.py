"""``augkit train DATA -o RUN_DIR``: fine-tune a torchvision ResNet, augmenting online with a recipe."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ..dataset import CHECKS
from ..errors import EXIT_SKIPPED
from ..freeze import FREEZE_CHOICES, MIN_IMAGES, MIN_PER_CLASS
from ..images import DEFAULT_MAX_PIXELS
from ..models import ARCHS
from ..distributed import launch, train_cli_args, under_torchrun
from ..train import DEVICES, ERRORS, TrainConfig, train
from ._common import cli_errors, err

Arch = Enum("Arch", {a: a for a in ARCHS}, type=str)
Freeze = Enum("Freeze", {f: f for f in FREEZE_CHOICES}, type=str)
Device = Enum("Device", {d: d for d in DEVICES}, type=str)
Check = Enum("Check", {c: c for c in CHECKS}, type=str)


@cli_errors
def command(
    data: Path = typer.Argument(..., metavar="DATA",
                                help="DATA/<class>/<image>, or DATA/train/<class>/... and DATA/val/<class>/..."),
    output: Path = typer.Option(..., "--output", "-o", help="Run folder to write (RUN_DIR)."),
    recipe: str = typer.Option("default", "--recipe", "-r",
                               help="Built-in recipe name, a recipe .yaml file, or none (no augmentation)."),
    arch: Arch = typer.Option("resnet18", "--arch", help="torchvision ResNet."),
    weights: str = typer.Option("imagenet", "--weights",
                                help="imagenet (torchvision's, downloaded), none (random init), or PATH: a "
                                "torchvision state-dict file or an earlier augkit run folder/checkpoint."),
    epochs: int = typer.Option(10, "--epochs", "-e", min=1),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate of the head (the backbone gets less when "
                             "fine-tuning pretrained weights)."),
    image_size: int = typer.Option(224, "--image-size", min=16, help="Training and prediction size (square)."),
    val_split: float = typer.Option(0.2, "--val-split", help="Share of each class held out for validation when "
                                    "DATA has no val folder (stratified, seeded); 0: no validation."),
    freeze: Freeze = typer.Option("auto", "--freeze",
                                  help=f"auto: head only with few images (< {MIN_IMAGES}, or < {MIN_PER_CLASS} per "
                                  "class), else fine-tune (head first, then all layers); head: backbone "
                                  "frozen; none: all layers from the start."),
    seed: int = typer.Option(0, "--seed", "-s", help="Decides initialisation, data order, split and augmentation."),
    device: Device = typer.Option("auto", "--device", help="auto picks cuda, then mps, then cpu."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=0,
                                          help="DataLoader worker processes; 0 loads in the main process "
                                          "[default: on a GPU, CPU count - 1 (max 16); on CPU, CPU count / 4 "
                                          "(1 to 4)]."),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision (float16), on cuda only."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUN_DIR from its last.pt."),
    check: Check = typer.Option("header", "--check", help="Check every file before training: header (signature, "
                                "size, end marker), full (decode) or none."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1,
                                   help="Reject images with more pixels (read from the header)."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Train with DistributedDataParallel in N processes on "
                              "this machine (relaunches itself under torchrun; one GPU each on cuda, gloo on "
                              "cpu); --batch-size is per process. Multi-node: run torchrun yourself (README, Scaling out)."),
) -> None:
    """Train an image classifier on DATA with a recipe's augmentations applied online.

    RUN_DIR gets: best.pt and last.pt (safe checkpoints with the classes, image size, normalization, decode policy and recipe); settings.yaml (every resolved setting); metrics.csv (one row per epoch); curves.png; errors.jsonl (files left out).

    Exit codes: 0 done; 1 failed; 2 bad options or data; 3 done, but some files were left out.
    """
    config = TrainConfig(data=data, out=output, recipe=recipe, arch=arch.value, weights=weights, epochs=epochs,
                         batch_size=batch_size, lr=lr, image_size=image_size, val_split=val_split,
                         freeze=freeze.value, seed=seed, device=device.value, workers=workers, amp=amp,
                         resume=resume, check=check.value, max_pixels=max_pixels)
    if nproc > 1 and not under_torchrun():  # augkit.distributed: the same command in N processes
        config.validate()
        code = launch(nproc, ["train", *train_cli_args(config)])
        raise typer.Exit(code=EXIT_SKIPPED if code == 0 and _skipped_files(output) else code)
    result = train(config, console=err)
    if result.skipped and not under_torchrun():  # torchrun takes any non-zero exit for a failure
        raise typer.Exit(code=EXIT_SKIPPED)


def _skipped_files(run_dir: Path) -> bool:
    """Whether the run that rank 0 wrote left files out (its errors.jsonl is not empty)."""
    errors = Path(run_dir) / ERRORS
    return errors.is_file() and errors.stat().st_size > 0
