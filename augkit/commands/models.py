"""``augkit models [PATTERN]``: the architectures ``augkit train --arch`` takes."""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from augkit.commands._common import cli_errors, err, out
from augkit.errors import UsageError


@cli_errors
def command(
    pattern: Optional[str] = typer.Argument(
        None, help="Only names matching this glob (convnext*) or containing this text (vit)."
    ),
    timm: bool = typer.Option(
        False,
        "--timm",
        help="List timm models instead (use as --arch timm/<name>; needs "
        'pip install "augkit\\[timm]"): timm\'s own name list, nothing built or downloaded; '
        "the parameter count is left out (it needs each model built).",
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table, or csv (name,family,imagenet_size,params,source)."),
) -> None:
    """List the architectures --arch takes: every torchvision classifier, or timm models.

    Columns: family, the image size its ImageNet weights were evaluated at, and the parameter count (read from the weights' metadata; nothing is downloaded). ViT needs exactly its size; other families take any size within their minimum.
    """
    if fmt not in ("table", "csv"):
        raise UsageError(f"--format {fmt!r} is not one of table, csv")
    if timm:
        err.print("reading timm's model list (importing timm takes a few seconds) ...", style="dim")
    # deferred: archs imports torch and torchvision (seconds); `augkit --help` must not pay for it
    from augkit.models.archs import describe, list_models
    from augkit.recipe.params import suggest

    names = list_models(pattern, timm=timm)
    if not names:
        every = list_models(timm=timm)
        bare = [n.removeprefix("timm/") for n in every]
        raise UsageError(
            f"no {'timm ' if timm else ''}architecture matches {pattern!r}"
            f"{suggest(pattern or '', bare)} (augkit models{' --timm' if timm else ''} lists all {len(every)}; "
            "a PATTERN is a glob such as 'convnext*' or text the name contains)"
        )
    rows = [describe(n, params=not timm) for n in names]
    if fmt == "csv":
        out.print("name,family,imagenet_size,params,source")
        for r in rows:
            params = "" if r["params"] is None else r["params"]
            out.print(f"{r['name']},{r['family']},{r['imagenet_size']},{params},{r['source']}", markup=False)
        return
    title = "architectures for augkit train --arch" + (f" ({len(rows)} timm models)" if timm else "")
    table = Table(title=title, title_justify="left")
    for col in ("name", "family", "ImageNet size", "parameters"):
        right = col in ("ImageNet size", "parameters")
        table.add_column(col, justify="right" if right else "left", style="bold" if col == "name" else None)
    for r in rows:
        params = "-" if r["params"] is None else f"{r['params'] / 1e6:.1f} M"
        table.add_row(escape(r["name"]), r["family"], f"{r['imagenet_size']} px", params)
    out.print(table)
