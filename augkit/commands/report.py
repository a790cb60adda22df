"""``augkit report RUN_DIR [EVAL_REPORT] -o report.html``: one self-contained HTML page to share."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape as esc

from augkit.commands._common import cli_errors, err


@cli_errors
def command(
    run: Path = typer.Argument(..., help="Run folder written by augkit train."),
    evaluation: Optional[Path] = typer.Argument(
        None, help="An augkit evaluate report (--report report.json): adds accuracy, views, classes, mistakes."
    ),
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="The HTML file to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Write one self-contained HTML report of a run: settings, curves, evaluation, confusion, mistakes, TTA views.

    Every picture is embedded in the file: it opens in any browser, without a server, and fetches nothing.
    """
    from augkit.report.page import build_report  # deferred: imports OpenCV and numpy

    rep = build_report(run, output, evaluation, overwrite=overwrite)
    err.print(esc(f"wrote {rep.path} ({', '.join(rep.sections)}; {rep.images} picture(s) embedded)"))
