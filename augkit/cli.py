"""The ``augkit`` command: one Typer app joining one module per command (augkit/commands/)."""
from __future__ import annotations

import typer

from . import __version__
from .commands import augment, preview, recipes
from .commands import evaluate, predict
from .commands import train

app = typer.Typer(
    name="augkit",
    help="Image data augmentation and test-time augmentation: recipes, offline augmentation, "
    "training and TTA.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(recipes.app, name="recipes")
app.command("preview")(preview.command)
app.command("augment")(augment.command)
app.command("predict")(predict.command)
app.command("evaluate")(evaluate.command)
app.command("train")(train.command)
# further commands register here: app.command("<name>")(<module>.command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"augkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """augkit: recipes, offline augmentation, training and TTA."""


def main() -> None:
    app()
