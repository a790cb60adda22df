"""``augkit export RUN -o model.onnx``: the model, its normalization and its TTA in one ONNX graph."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape as esc

from augkit.commands._common import cli_errors, on_interrupt
from augkit.commands._infer import TTA_HELP, say


@cli_errors
@on_interrupt("nothing was written (the .onnx file is written whole or not at all); run the command again")
def command(
    run: Path = typer.Argument(..., help="Run folder (uses its best.pt) or a checkpoint file."),
    output: Path = typer.Option(..., "--output", "-o", help="The .onnx file to write."),
    tta: Optional[str] = typer.Option(
        None,
        "--tta",
        "-t",
        help=TTA_HELP + " none: the plain view only \\[default: the run recipe's tta section, else none].",
    ),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (18 or later)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Export a run's model to ONNX, with normalization and TTA views inside the graph.

    Input "images": uint8 RGB (N, 3, S, S) at the run's image size, decoded and resized as augkit does. Outputs "probs" (N, K), the merged TTA probabilities, and "view_probs" (V, N, K), each view's. Class names, image size, decode policy and the TTA spec are in the file's metadata. The file is checked with onnxruntime against PyTorch before the command succeeds. Needs pip install "augkit\\[onnx]".
    """
    from augkit.infer.export import (
        export_onnx,  # deferred: imports torch (seconds); `augkit --help` must not pay for it
    )

    res = export_onnx(run, output, tta=tta, opset=opset, overwrite=overwrite, on_note=lambda m: say(esc(m)))
    views = ", ".join(res.views)
    say(
        esc(
            f"wrote {res.path} ({res.bytes / 2**20:.1f} MiB, opset {res.opset}, {res.seconds:.1f} s): "
            f"probs merge {len(res.tta.views)} view(s) by {res.tta.merge}; view_probs: {views}; "
            f"onnxruntime vs PyTorch max |diff| {res.max_abs_diff:.1e}"
        )
    )
