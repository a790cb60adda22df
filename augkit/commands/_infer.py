"""What ``augkit predict`` and ``augkit evaluate`` share on the command line: the TTA and merge
options' help, the workers default's help, one-line messages, the skipped-inputs list and the
progress bar. Cheap to import (no torch): see :mod:`augkit.commands`."""

from __future__ import annotations

from enum import Enum

from rich.markup import escape as esc

from augkit.commands._common import err, is_tty
from augkit.infer.options import describe_tta, tta_label
from augkit.recipe.views import MERGE_MODES

Merge = Enum("Merge", {v: v for v in MERGE_MODES}, type=str)  # type: ignore[misc]  # members computed: mypy cannot follow
TTA_HELP = (
    "TTA views: a preset (identity, flip, vflip, shift, five-crop, ten-crop, scales, d4; combine with +, "
    "e.g. flip+shift), a built-in recipe (tta-flip, tta-flip-shift, tta-ten-crop) or a recipe .yaml "
    "with a tta section."
)
TTA_DEFAULT_HELP = (
    " none (or identity): the plain view \\[default: the run's own: its recipe's tta section; for an exported "
    ".onnx, the views it was exported with; else none]"
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


def tta_summary(spec, given: str | None = None) -> str:
    """``TTA flip (2 views, merge mean)`` for the closing line; ``given``: the user's ``--tta``."""
    n = len(spec.views)
    label = given or ("none" if n == 1 and spec.views[0].is_identity else tta_label(spec))
    beta = f", beta {spec.beta:g}" if spec.beta else ""
    return f"TTA {label} ({n} view{'s' * (n != 1)}, merge {spec.merge}{beta})"


def list_skipped(errors: list[dict], where: str, show: int = 10) -> None:
    """The first ``show`` skipped inputs with their reasons, then where the rest are listed."""
    for e in errors[:show]:
        say("  [red]skipped[/] " + esc(f"{e['path']}: {e['reason']}" + (f" ({e['detail']})" if e["detail"] else "")))
    if len(errors) > show:
        say(esc(f"  ... {len(errors) - show} more {where}"))
    elif errors and where:
        say(esc(f"skipped inputs are listed {where}"))


class progress_bar:
    """A rich progress bar on stderr when it is a terminal. Yields the library's hooks as keyword
    arguments (``on_start``, ``progress``, ``on_tta``); ``on_tta`` prints the TTA header line."""

    def __init__(self, title: str):
        self.title = title

    def __enter__(self) -> dict:
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
            if self.task is not None:
                self.bar.update(self.task, advance=k)

        def on_tta(spec, source: str) -> None:
            say(esc(f"{self.title}: {describe_tta(spec, source)}"))

        return {"on_start": on_start, "progress": on_progress, "on_tta": on_tta}

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)
