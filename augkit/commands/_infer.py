"""What ``augkit predict`` and ``augkit evaluate`` share on the command line: the TTA and merge
options' help, the workers default's help, one-line messages, the skipped-inputs list and the
progress bar. Cheap to import (no torch): see :mod:`augkit.commands`."""

from __future__ import annotations

from enum import Enum

from rich.markup import escape as esc

from augkit.commands._common import err, is_tty
from augkit.recipe.views import MERGE_MODES

Merge = Enum("Merge", {m: m for m in MERGE_MODES}, type=str)
TTA_HELP = (
    "TTA views: a preset (identity, flip, vflip, shift, five-crop, ten-crop, scales, d4; combine with +, "
    "e.g. flip+shift), a built-in recipe (tta-flip, tta-flip-shift, tta-ten-crop) or a recipe .yaml "
    "with a tta section."
)
MERGE_HELP = "How views merge (on probabilities) \\[default: the recipe's, else mean]."
BETA_HELP = "Blend: (1-beta) * merged + beta * plain view \\[default: 0]."
WORKERS_HELP = (
    "Decoding worker processes, each single-threaded; 0 decodes in the main process \\[default: on "
    "the CPU one per 4 cores, at most 4 (0 on 2 cores: the model's threads get the cores); "
    "on a GPU the cores but one, at most 4]."
)


def say(text: str) -> None:
    """One message line on stderr, never wrapped (paths stay copyable)."""
    err.print(text, soft_wrap=True)


def list_skipped(errors: list[dict], where: str, show: int = 10) -> None:
    """The first ``show`` skipped inputs with their reasons, then where the rest are listed."""
    for e in errors[:show]:
        say("  [red]skipped[/] " + esc(f"{e['path']}: {e['reason']}" + (f" ({e['detail']})" if e["detail"] else "")))
    if len(errors) > show:
        say(esc(f"  ... {len(errors) - show} more {where}"))
    elif errors and where:
        say(esc(f"skipped inputs are listed {where}"))


class progress_bar:
    """A rich progress bar on stderr when it is a terminal; yields the library's callbacks."""

    def __init__(self, title: str):
        self.title = title

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn(f"[bold]{self.title}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not is_tty(),
        )
        self.bar.__enter__()
        self.task = None

        def on_start(n: int) -> None:
            self.task = self.bar.add_task("images", total=n)

        def on_progress(k: int) -> None:
            self.bar.update(self.task, advance=k)

        return on_start, on_progress

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)
