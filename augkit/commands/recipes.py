"""``augkit recipes list | show | check | export | ops``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from augkit.commands._common import cli_errors, err, out
from augkit.errors import AugkitError, UsageError
from augkit.labels.geometry import check_labelled, kinds_of_format
from augkit.recipe.api import (
    EXPORT_BOX_FORMATS,
    EXPORT_KEYPOINT_KINDS,
    export_albumentations,
    export_imports,
    list_builtin,
    load_recipe,
)
from augkit.recipe.batchspec import describe_batch
from augkit.recipe.fit import size_warnings
from augkit.recipe.labelspec import describe_labels
from augkit.recipe.ops import get_op, step_names
from augkit.recipe.passthrough import albumentations_transforms
from augkit.recipe.views import list_presets

app = typer.Typer(help="List, show, check and export recipes.", no_args_is_help=True)


def _table(title: str, columns: tuple[str, ...], rows) -> Table:
    """A left-titled table; the first column bold, every cell escaped (recipe text is not markup)."""
    t = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        t.add_column(name, style="bold" if i == 0 else None)
    for row in rows:
        t.add_row(*(escape(c) for c in row))
    return t


@app.command("list")
@cli_errors
def list_cmd() -> None:
    """List the built-in recipes."""
    rows = []
    for name in list_builtin():
        r = load_recipe(name)
        rows.append(
            (name, "+".join(s for s, v in (("train", r.train), ("batch", r.batch), ("tta", r.tta)) if v), r.description)
        )
    out.print(
        _table(
            "built-in recipes (use by name, or give a path to your own .yaml)",
            ("name", "sections", "description"),
            rows,
        )
    )


@app.command("show")
@cli_errors
def show_cmd(recipe: str = typer.Argument(..., help="Recipe name or file.")) -> None:
    """Print a recipe fully resolved (every default filled in) as YAML."""
    r = load_recipe(recipe)
    out.print(f"# recipe {r.name} (hash {r.hash}) from {r.source}", markup=False)
    out.print(r.resolved_yaml(), markup=False, end="")


@app.command("check")
@cli_errors
def check_cmd(
    files: list[Path] = typer.Argument(..., help="Recipe files to validate."),
    labels: Optional[str] = typer.Option(
        None,
        "--labels",
        help="Also check the recipe for a labelled dataset of this kind (yolo, coco, voc, masks): every step "
        "must move the labels it holds (boxes, polygons, keypoints, masks).",
    ),
    image_size: Optional[int] = typer.Option(
        None,
        "--image-size",
        min=8,
        help="Warn about steps whose magnitudes do not fit images of this size (e.g. TrivialAugment's 32 px translations on 28 px digits).",
    ),
) -> None:
    """Validate recipe files: each gets a line (ok, or the error naming the line, step and key); exit 2 if any failed."""
    code = 0
    kinds = kinds_of_format(labels) if labels is not None else None
    for f in files:
        try:
            r = load_recipe(f)
            warnings = check_labelled(r, kinds) if kinds is not None else []
            warnings += size_warnings(r, image_size) if image_size is not None else []
            for w in warnings:
                err.print(f"[yellow]warning:[/] {f}: {escape(w)}", soft_wrap=True)
        except AugkitError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            code = max(code, exc.exit_code)
            continue
        views = len(r.tta.views) if r.tta else 0
        batch = f", batch {'+'.join(r.batch.kinds)}" if r.batch else ""
        out.print(f"{f}: ok ({len(r.train)} train steps{batch}, {views} TTA views, hash {r.hash})", markup=False)
    if code:
        raise typer.Exit(code=code)


@app.command("export")
@cli_errors
def export_cmd(
    recipe: str = typer.Argument(..., help="Recipe name or file."),
    to: str = typer.Option("albumentations", "--to", help="Target format (albumentations)."),
    output: Path = typer.Option(..., "--output", "-o", help="File to write (.json or .yaml)."),
    labels: Optional[str] = typer.Option(
        None,
        "--labels",
        help="For a labelled dataset of this kind (yolo, coco, voc, masks): add albumentations' bbox_params and keypoint_params in its format, with the recipe's label rules.",
    ),
) -> None:
    """Export the train pipeline as albumentations' own serialized YAML/JSON (albumentations.load reads it)."""
    if to != "albumentations":
        raise UsageError(f"--to {to!r} is not supported (allowed: albumentations)")
    rec = load_recipe(recipe)
    path = export_albumentations(rec, output, labels=labels)
    err.print(
        f"wrote {path}: load with albumentations.load({str(path)!r}); to reproduce augkit's pixels seed it "
        "with augkit.recipe.api.seed_random_state(pipeline, sample_seed)"
    )
    if labels in EXPORT_KEYPOINT_KINDS:
        err.print(
            "call it as pipeline(image=..., bboxes=..., class_labels=...[, keypoints=...]); "
            "note: albumentations 2.0.8 does not swap left/right keypoints under a horizontal flip, as augkit does"
        )
    elif labels is not None and EXPORT_BOX_FORMATS.get(labels):
        err.print("call it as pipeline(image=..., bboxes=..., class_labels=...)")
    elif labels is not None:
        err.print("call it as pipeline(image=..., mask=...)")
    needs = export_imports(rec.to_albumentations()) if rec.train else []
    if needs:
        err.print(
            f"note: the pipeline uses augkit's own transforms: run import {', '.join(needs)} before "
            "albumentations.load (albumentations 2.0.8 has no TrivialAugment or RandAugment)"
        )
    if rec.batch is not None:
        err.print(
            f"note: the batch section ({'+'.join(rec.batch.kinds)}) is not exported: albumentations transforms "
            "work on one image; use augkit.training.mixing.BatchAugment on batches"
        )


@app.command("ops")
@cli_errors
def ops_cmd(
    albumentations: bool = typer.Option(False, "--albumentations", help="Also list albumentations transforms."),
) -> None:
    """List augkit's ops with their parameters, and the TTA presets."""
    rows = []
    for name in step_names():
        spec = get_op(name)
        params = spec.listing or "\n".join(f"{k}: {p.allowed()} ({p.default})" for k, p in spec.all_params().items())
        rows.append((name, params, spec.doc))
    out.print(
        _table(
            "ops (every step also takes p: probability, default 1)",
            ("op", "parameters (default)", "what it does"),
            rows,
        )
    )
    out.print("TTA presets (combine with +): " + ", ".join(list_presets()))
    out.print("batch section (train only, per batch): " + describe_batch(), markup=False)
    out.print("labels section (labelled datasets only): " + describe_labels(), markup=False)
    if albumentations:
        out.print("albumentations transforms: " + ", ".join(albumentations_transforms()))
