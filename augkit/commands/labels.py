"""``augkit labels check``."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer
from rich.markup import escape

from augkit.commands._common import cli_errors, err, out
from augkit.errors import EXIT_OK, EXIT_SKIPPED
from augkit.labels.check import check_info, count_reasons
from augkit.labels.formats import open_dataset
from augkit.labels.model import KINDS

app = typer.Typer(
    help="Check labelled datasets: YOLO, COCO, Pascal VOC and mask folders.", no_args_is_help=True, add_completion=False
)

Kind = Enum("Kind", {v: v for v in KINDS}, type=str)  # type: ignore[misc]  # members computed: mypy cannot follow


@app.callback()
def _group() -> None:
    # a group even with one sub-command: `augkit labels check`, room for more (Typer collapses a lone command)
    pass


@app.command("check")
@cli_errors
def check_cmd(
    src: Path = typer.Argument(..., help="The dataset folder."),
    labels: Kind | None = typer.Option(
        None, "--labels", help="The dataset's kind (default: detected from its layout)."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per problem on stdout instead of text."),
) -> None:
    """Validate a labelled dataset without writing anything: each problem with its file and line; exit 3 if any.

    Checks: orphan and missing label files, class ids, coordinates, boxes, polygons, keypoint counts, sizes, ids.
    """
    info = open_dataset(src, labels.value if labels else None)
    splits = ", ".join(f"{k} {len(v)}" for k, v in info.splits.items())
    err.print(
        f"{info.kind} dataset {escape(str(src))}: {len(info.items)} images ({escape(splits)}), "
        f"{len(info.names)} {'class' if len(info.names) == 1 else 'classes'}",
        soft_wrap=True,
    )
    issues = check_info(info)
    for issue in issues:
        if as_json:
            out.print(json.dumps(issue.to_dict(), ensure_ascii=False), markup=False, highlight=False)
        else:
            out.print(str(issue), markup=False, highlight=False)
    if not issues:
        err.print("[green]ok[/]: no problems found")
        raise typer.Exit(code=EXIT_OK)
    counts = ", ".join(f"{n} {reason}" for reason, n in count_reasons(issues).items())
    err.print(f"[yellow]{len(issues)} problem(s)[/]: {escape(counts)}", soft_wrap=True)
    raise typer.Exit(code=EXIT_SKIPPED)
