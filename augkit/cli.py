"""The ``augkit`` command: one Typer app joining one module per command (augkit/commands/).

Start-up is kept instant: this module imports only the standard library, and each command
module is imported when that command runs (``augkit --version`` and ``--help`` import no
command at all, so neither torch nor albumentations). ``app`` is built on first use.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

#: Exit status after Ctrl-C (SIGINT), at any moment, start-up included: 128 + SIGINT, as shells do.
EXIT_INTERRUPTED = 130

#: name -> (module in augkit.commands, attribute, one-line help). The help is spelled here so that
#: ``augkit --help`` lists the commands without importing them; a test checks it against each
#: command's own docstring. New commands register here.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "recipes": ("recipes", "app", "List, show, check and export recipes."),
    "labels": ("labels", "app", "Check labelled datasets: YOLO, COCO, Pascal VOC and mask folders."),
    "preview": (
        "preview",
        "command",
        "Draw a grid: rows are source images, columns the original and augmented versions.",
    ),
    "augment": ("augment", "command", "Write augmented copies of SRC into DST, keeping its class folders."),
    "predict": ("predict", "command", "Predict the class of each image, optionally merged over TTA views."),
    "evaluate": ("evaluate", "command", "Plain vs TTA vs each single view on labelled images, with a paired test."),
    "train": ("train", "command", "Train an image classifier on DATA with a recipe's augmentations applied online."),
    "models": (
        "models",
        "command",
        "List the architectures --arch takes: every torchvision classifier, or timm models.",
    ),
    "export": ("export", "command", "Export a run's model to ONNX, with normalization and TTA views inside the graph."),
    "report": (
        "report",
        "command",
        "Write one self-contained HTML report of a run: settings, curves, evaluation, confusion, mistakes, TTA views.",
    ),
}

_APP: Any = None


def build_app() -> Any:
    """The Typer app (built once). Commands are attached lazily by :class:`~augkit.commands._lazy.LazyGroup`."""
    global _APP
    if _APP is None:
        from augkit.commands._lazy import make_app  # deferred: main() must be able to catch Ctrl-C during it

        _APP = make_app(COMMANDS)
    return _APP


def __getattr__(name: str) -> Any:
    """``from augkit.cli import app`` still works (tests, embedding) and builds the app on demand."""
    if name == "app":
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Entry point of the ``augkit`` script. Ctrl-C, even while importing, exits 130 without a traceback."""
    try:
        from augkit import process_setup as own_process  # stdlib only: keeps `augkit --version` instant

        own_process.setup()
        try:
            build_app()()
        finally:
            # Leave the loaded modules to the operating system: the interpreter's last garbage
            # collection walks every object albumentations/pydantic/torch created (~0.1-0.2 s).
            gc.freeze()
    except KeyboardInterrupt:
        try:
            sys.stderr.write("interrupted\n")
            sys.stderr.flush()
        except (KeyboardInterrupt, OSError):
            pass
        raise SystemExit(EXIT_INTERRUPTED) from None
