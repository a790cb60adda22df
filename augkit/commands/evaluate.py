"""``augkit evaluate RUN DATA``: plain vs TTA vs each view on a labelled folder, with a paired test."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape as esc
from rich.table import Table

from augkit.commands._common import cli_errors, err
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
)
from augkit.errors import EXIT_SKIPPED, UsageError
from augkit.infer.files import check_output
from augkit.infer.gallery import GALLERY_TILES
from augkit.infer.options import InferOptions
from augkit.limits import DEFAULT_MAX_PIXELS

MAX_TABLE_CLASSES = 12
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@cli_errors
def command(
    run: Path = typer.Argument(..., help="Run folder (uses its best.pt) or a checkpoint file."),
    data: Path = typer.Argument(..., help="Labelled folder: DATA/<class>/<image>; classes by the model's names."),
    tta: Optional[str] = typer.Option(None, "--tta", "-t", help=TTA_HELP + TTA_DEFAULT_HELP),
    merge: Optional[Merge] = typer.Option(None, "--merge", help=MERGE_HELP),
    beta: Optional[float] = typer.Option(None, "--beta", min=0.0, max=1.0, help=BETA_HELP),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the full report as JSON."),
    confusion: Optional[Path] = typer.Option(
        None,
        "--confusion",
        help="Draw the confusion matrix of the merged (TTA) predictions (.png, at least 600 px, titled plain or TTA).",
    ),
    gallery: Optional[Path] = typer.Option(
        None,
        "--gallery",
        help="Draw the most confident mistakes (.png): "
        f"up to {GALLERY_TILES} images with true and predicted label and "
        "probability.",
    ),
    top_k: int = typer.Option(
        5, "--top-k", "-k", min=1, help="Also report top-k accuracy (left out when k >= the number of classes)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="Images per batch (each with all views)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=0, help=WORKERS_HELP),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help="Reject images with more pixels (read from the header)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing report/confusion files."),
) -> None:
    """Plain vs TTA vs each single view on labelled images, with a paired test.

    Reports plain and TTA accuracy, each view alone, the gain with an exact McNemar test, top-k, per-class accuracy, a confusion matrix, and the subset of views that scored best on this data.

    Exit codes: 0 done; 1 nothing could be read; 2 bad options or classes the model does not know; 3 done, but some images were skipped (listed in the report).
    """
    # deferred: the library imports torch (seconds); `augkit --help` must not pay for it
    from augkit.infer.evaluate import evaluate, write_confusion, write_report
    from augkit.infer.gallery import write_gallery

    opts = InferOptions(
        tta=tta,
        merge=merge.value if merge else None,
        beta=beta,
        top_k=top_k,
        batch_size=batch_size,
        device=device,
        workers=workers,
        max_pixels=max_pixels,
    )
    check_output(report, overwrite, "report")
    check_output(confusion, overwrite, "confusion picture")
    check_output(gallery, overwrite, "gallery picture")
    for opt, path in (("--confusion", confusion), ("--gallery", gallery)):
        if path is not None and path.suffix.lower() not in PICTURE_SUFFIXES:
            raise UsageError(f"{opt} {path}: give a picture file name (.png)")
    with progress_bar("evaluate") as hooks:
        rep = evaluate(run, data, opts, tta_label=tta, **hooks)
    if report is not None:
        write_report(rep, report)
    if confusion is not None:
        write_confusion(rep, confusion)
    if gallery is not None:
        write_gallery(rep, gallery)
    print_report(rep)
    written = [str(p) for p in (report, confusion, gallery) if p is not None]
    if written:
        say(esc("wrote " + ", ".join(written)))
    if rep["errors"]:
        raise typer.Exit(code=EXIT_SKIPPED)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _gain(x: float) -> str:
    return f"{100 * x:+.2f} pt"


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def print_report(rep: dict) -> None:
    """The report as rich tables on stderr."""
    acc, mc, cnt, cls = rep["accuracy"], rep["mcnemar"], rep["counts"], rep["classes"]
    say(
        esc(
            f"{rep['data']}: {cnt['evaluated']} images evaluated"
            + (f", {cnt['skipped']} skipped" if cnt["skipped"] else "")
            + (f", {cnt['unlabelled']} outside class folders ignored" if cnt["unlabelled"] else "")
        )
    )
    if cls["subset"]:
        say(
            esc(
                f"note: the folder has {len(cls['data'])} of the model's {len(cls['model'])} classes "
                f"(missing: {', '.join(cls['missing_from_data'])}); predictions still range over all"
            )
        )
    t = Table(
        title=esc(
            f"TTA {rep['tta']['spec']}: {len(rep['tta']['views'])} views, merge "
            f"{rep['tta']['merge']}" + (f", beta {rep['tta']['beta']:g}" if rep["tta"]["beta"] else "")
        ),
        title_justify="left",
    )
    topk = [f"top-{acc['top_k']}"] if acc["top_k"] else []  # none when k >= the classes (always 100%)
    macro = rep.get("macro", {})
    for col in ("", "accuracy", *topk, "log-loss", "macro P", "macro R", "macro F1"):
        t.add_column(col, justify="right" if col else "left")
    for name, key in (("plain", "plain"), ("TTA", "tta")):
        avg = macro.get(key, {})
        t.add_row(
            name,
            _pct(acc[key]),
            *([_pct(acc[f"{key}_top_k"])] if topk else []),
            f"{acc[f'{key}_nll']:.4f}",
            *(_pct(avg[m]) if m in avg else "-" for m in ("precision", "recall", "f1")),
        )
    err.print(t)
    say(
        f"gain {_gain(acc['gain'])}; McNemar exact p = {_p(mc['p_value'])} "
        f"(plain only right: {mc['plain_only_right']}, TTA only right: {mc['tta_only_right']})"
    )
    v = Table(title="single views (paired with plain)", title_justify="left")
    for col in ("view", "accuracy", "gain", "p"):
        v.add_column(col, justify="left" if col == "view" else "right")
    for row in rep["views"]:
        name = row["name"] + ("" if row["in_merge"] else " (plain, not merged)")
        v.add_row(esc(name), _pct(row["accuracy"]), _gain(row["gain"]), _p(row["p_value"]))
    err.print(v)
    pc = Table(
        title="per class (accuracy plain and TTA; precision, recall, F1 of the TTA predictions)", title_justify="left"
    )
    for col in ("class", "images", "plain", "TTA", "precision", "recall", "F1"):
        pc.add_column(col, justify="left" if col == "class" else "right")
    for row in rep["per_class"]:
        pc.add_row(
            esc(row["class"]),
            str(row["n"]),
            _pct(row["plain"]),
            _pct(row["tta"]),
            *(_pct(row[m]) if m in row else "-" for m in ("precision", "recall", "f1")),
        )
    err.print(pc)
    labels, m = rep["confusion"]["labels"], rep["confusion"]["matrix"]
    if len(labels) <= MAX_TABLE_CLASSES:
        cm = Table(title="confusion (rows: true, columns: TTA prediction)", title_justify="left")
        cm.add_column("")
        for name in labels:
            cm.add_column(esc(name), justify="right")
        for name, row in zip(labels, m):
            cm.add_row(esc(name), *[str(x) if x else "." for x in row])
        err.print(cm)
    for m in rep.get("mistakes", [])[:3]:
        say(esc(f"confident mistake: {m['path']}: {m['true']} predicted {m['predicted']} ({m['prob']:.0%})"))
    s = rep["suggested_views"]
    say(
        esc(
            f"suggested views: {', '.join(s['views'])} -> {_pct(s['accuracy'])} "
            f"(merge {rep['tta']['merge']}; {s['note']})"
        )
    )
    list_skipped(rep["errors"], "in the report (errors)")
