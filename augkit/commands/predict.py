"""``augkit predict RUN INPUTS...``: class predictions, optionally averaged over TTA views."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape as esc

from augkit.commands._common import cli_errors, interrupted_exit, on_interrupt
from augkit.commands._infer import (
    BETA_HELP,
    MERGE_HELP,
    TTA_DEFAULT_HELP,
    TTA_HELP,
    WORKERS_HELP,
    Merge,
    list_skipped,
    progress_bar,
    say,
    tta_summary,
)
from augkit.errors import EXIT_SKIPPED
from augkit.infer.files import FORMATS, check_output, errors_path, write_predictions
from augkit.infer.options import InferOptions
from augkit.limits import DEFAULT_MAX_PIXELS

Format = Enum("Format", {v: v for v in FORMATS}, type=str)  # type: ignore[misc]  # members computed: mypy cannot follow


@cli_errors
@on_interrupt("no predictions were written (predict writes its output once every input is done); run the command again")
def command(
    run: Path = typer.Argument(
        ...,
        help="Run folder (uses its best.pt), a checkpoint file, or a model.onnx from "
        "augkit export (run by onnxruntime; --tta only among the views it was exported with).",
    ),
    inputs: list[Path] = typer.Argument(
        ..., help="Image files, folders (searched recursively) and .txt/.lst files listing one path a line."
    ),
    tta: Optional[str] = typer.Option(None, "--tta", "-t", help=TTA_HELP + TTA_DEFAULT_HELP),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="File to write \\[default: stdout]."),
    fmt: Format = typer.Option("csv", "--format", "-f", help="csv: path,label,prob (+ top-k columns); jsonl."),
    top_k: int = typer.Option(1, "--top-k", "-k", min=1, help="Also give the k most likely classes."),
    merge: Optional[Merge] = typer.Option(None, "--merge", help=MERGE_HELP),
    beta: Optional[float] = typer.Option(None, "--beta", min=0.0, max=1.0, help=BETA_HELP),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="Images per batch (each with all views)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    workers: Optional[int] = typer.Option(
        None,
        "--workers",
        "-w",
        min=0,
        help=WORKERS_HELP + " With --engine ray: actors in the pool \\[default: the cluster's CPUs].",
    ),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help="Reject images with more pixels (read from the header)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    engine: str = typer.Option(
        "local",
        "--engine",
        help="local, or ray: a pool of Ray actors, each loading the "
        "model once (Ray Data; needs augkit's ray extra; see docs/scaling.md).",
    ),
    address: Optional[str] = typer.Option(
        None,
        "--address",
        help="With --engine ray: the Ray cluster, auto or "
        "ray://HOST:10001 (default: RAY_ADDRESS, else a running cluster on this "
        "node, else a Ray started for this run).",
    ),
) -> None:
    """Predict the class of each image, optionally merged over TTA views.

    Uses the run's saved classes, image size, normalization and decode policy.

    With -o, skipped inputs (unreadable, truncated, not an image) are listed in <output>.errors.csv. Exit codes: 0 done; 2 bad options; 3 done, but some inputs were skipped.
    """
    # deferred: the library imports torch (seconds); `augkit --help` must not pay for it
    from augkit.infer.predict import predict

    opts = InferOptions(
        tta=tta,
        merge=merge.value if merge else None,
        beta=beta,
        top_k=top_k,
        batch_size=batch_size,
        device=device,
        workers=workers,
        max_pixels=max_pixels,
        engine=engine,
        address=address,
    )
    if output is not None:
        check_output(output, overwrite)
        check_output(errors_path(output), overwrite, "errors file")
    try:
        with progress_bar("predict") as hooks:
            preds = predict(run, [str(i) for i in inputs], opts, **hooks)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: keep what finished, beside the output
        raise interrupted_exit(exc, _keep_partial(exc, output, fmt.value, top_k)) from None
    efile = write_predictions(preds, output, fmt.value, top_k)
    c = preds.counts
    say(
        esc(
            f"predicted {c['predicted']} of {c['inputs']} images with {tta_summary(preds.tta, tta)}"
            + (f" (engine {engine})" if engine != "local" else "")
            + (f" -> {output}" if output else "")
        )
    )
    list_skipped(preds.errors, f"in {efile}" if efile else "")
    if preds.errors:
        raise typer.Exit(code=EXIT_SKIPPED)


def _keep_partial(exc: KeyboardInterrupt, output: Path | None, fmt: str, top_k: int) -> str:
    """Write the predictions finished before an interruption to ``<output stem>.partial<suffix>``
    (never to OUTPUT: it is written only once every input is done, so a re-run is not refused
    by it) and say what was kept."""
    partial = getattr(exc, "predictions", None)
    if output is None or partial is None or not partial.rows:
        return "no predictions were written (predict writes its output once every input is done); run the command again"
    kept = Path(output).with_name(Path(output).stem + ".partial" + Path(output).suffix)
    try:
        write_predictions(partial, kept, fmt, top_k)
    except Exception as err:  # noqa: BLE001 - the interruption is what the user must see
        return f"no predictions were written ({kept}: {err}); run the command again"
    return (
        f"the {len(partial.rows)} finished predictions are in {kept} ({output} is written only when every "
        "input is done); run the command again for all"
    )
