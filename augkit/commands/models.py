"""``augkit models [PATTERN]``: the architectures ``augkit train --arch`` takes."""

from __future__ import annotations

import fnmatch
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from augkit.commands._common import cli_errors, out
from augkit.errors import UsageError


def _matches(name: str, pattern: str | None) -> bool:
    """A glob (``convnext*``) or, without wildcards, a substring (``vit``)."""
    if not pattern:
        return True
    return fnmatch.fnmatch(name, pattern) if any(c in pattern for c in "*?[") else pattern in name


@cli_errors
def command(
    pattern: Optional[str] = typer.Argument(
        None, help="Only names matching this glob (convnext*) or containing this text (vit)."
    ),
    timm: bool = typer.Option(
        False,
        "--timm",
        help="List timm models instead (use as --arch timm/<name>; needs "
        'pip install "augkit\\[timm]"); give a PATTERN, timm has over a thousand.',
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table, or csv (name,family,imagenet_size,params,source)."),
) -> None:
    """List the architectures --arch takes: every torchvision classifier, or timm models.

    Columns: family, the image size its ImageNet weights were evaluated at, and the parameter count (read from the weights' metadata; nothing is downloaded). ViT needs exactly its size; other families take any size within their minimum.
    """
    # deferred: archs imports torch and torchvision (seconds); `augkit --help` must not pay for it
    from augkit.models.archs import TIMM_PREFIX, describe, import_timm, torchvision_archs

    if fmt not in ("table", "csv"):
        raise UsageError(f"--format {fmt!r} is not one of table, csv")
    if timm:
        names = [TIMM_PREFIX + n for n in import_timm().list_models() if _matches(n, pattern)]
    else:
        names = [n for n in torchvision_archs() if _matches(n, pattern)]
    if not names:
        raise UsageError(f"no {'timm ' if timm else ''}architecture matches {pattern!r} (augkit models lists them all)")
    rows = [describe(n) for n in names]
    if fmt == "csv":
        out.print("name,family,imagenet_size,params,source")
        for r in rows:
            out.print(f"{r['name']},{r['family']},{r['imagenet_size']},{r['params']},{r['source']}", markup=False)
        return
    table = Table(title="architectures for augkit train --arch", title_justify="left")
    for col, justify in (("name", "left"), ("family", "left"), ("ImageNet size", "right"), ("parameters", "right")):
        table.add_column(col, justify=justify, style="bold" if col == "name" else None)
    for r in rows:
        table.add_row(escape(r["name"]), r["family"], f"{r['imagenet_size']} px", f"{r['params'] / 1e6:.1f} M")
    out.print(table)
