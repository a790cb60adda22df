"""``augkit preview SRC --recipe R -o preview.png``: a labelled picture of what a recipe does."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer

from augkit.commands._common import cli_errors, err, on_interrupt
from augkit.errors import AugkitError


@cli_errors
@on_interrupt("no preview was written; run the command again")
def command(
    sources: list[Path] = typer.Argument(..., help="Image files and/or folders (class folders are sampled in turn)."),
    recipe: str = typer.Option(
        "default", "--recipe", "-r", help="Built-in recipe name, a recipe .yaml file, or none (the originals only)."
    ),
    output: Path = typer.Option(Path("preview.png"), "--output", "-o", help="Picture to write (.png, .jpg, .webp)."),
    images: int = typer.Option(4, "--images", help="Rows: how many source images (1-64)."),
    versions: int = typer.Option(6, "--versions", help="Columns: augmented versions per image (1-64)."),
    extremes: bool = typer.Option(
        False, "--extremes", help="Show each step alone at the low and high ends of its ranges."
    ),
    seed: int = typer.Option(0, "--seed", "-s", help="Seed of the first version (then seed+1, ...)."),
    cell: int = typer.Option(160, "--cell", help="Cell size in pixels (48-1024)."),
    tta: Optional[str] = typer.Option(
        None,
        "--tta",
        help="Draw a TTA instead of a recipe: each view (columns) on each image (rows), as the model sees it. "
        "A run folder or exported .onnx (its own TTA, at its image size), a preset (flip+shift) or a recipe with a tta section.",
    ),
    labels: Optional[str] = typer.Option(
        None,
        "--labels",
        help="A labelled dataset folder's kind (yolo, coco, voc, masks; default: detected), drawn on every tile; folders: class folders.",
    ),
) -> None:
    """Draw a grid: rows are source images, columns the original and augmented versions."""
    if tta is not None:
        from augkit.report.views import tta_preview  # deferred: imports torch

        with _writing(output):
            path, spec, source = tta_preview(sources, tta, output, images=images, cell=cell)
        err.print(f"preview of {len(spec.views)} TTA view(s) ({source}) written to {path}")
        return
    from augkit.offline.preview import preview  # deferred: OpenCV, numpy and albumentations load only when it runs
    from augkit.recipe.api import load_recipe

    rec = None if recipe.lower() == "none" else load_recipe(recipe)
    with _writing(output):
        path = preview(
            rec,
            sources,
            output,
            images=images,
            versions=versions,
            seed=seed,
            extremes=extremes,
            cell=cell,
            labels=labels,
        )
    if rec is None:
        err.print(f"recipe none (no augmentation): the originals, as train -r none reads them, written to {path}")
        return
    err.print(f"preview of recipe [bold]{rec.name}[/] written to {path}")
    if rec.batch is not None:  # mixing needs a batch of images: the picture shows the per-image steps
        err.print(
            f"note: the recipe's batch section ({'/'.join(rec.batch.kinds)}) is not shown: it mixes "
            "training batches in `augkit train`"
        )


@contextlib.contextmanager
def _writing(output: Path):
    """A picture that cannot be written (read-only folder, disk full): one line, exit 1, no traceback.
    The write is atomic (a temp file, then a rename), so no partial picture is left."""
    try:
        yield
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else output
        what = output if where.parent == output.parent else where
        raise AugkitError(f"could not write {what}: {exc.strerror or exc} (no partial file was left)") from None
