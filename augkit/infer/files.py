"""The files ``predict`` and ``evaluate`` write: prediction CSV/JSON Lines, the errors CSV beside
them, reports. Every write is atomic (never a partial file) and never replaces an existing file
unless asked. Light on purpose (no torch): the command modules import it at their top level.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from augkit.errors import AugkitError, UsageError
from augkit.io.fileio import atomic_write_text

FORMATS = ("csv", "jsonl")


class PredictionsLike(Protocol):
    """What the writers read of :class:`augkit.infer.predict.Predictions`."""

    rows: list[dict]  # {"path", "label", "prob", "top": [(label, prob), ...]} in input order
    errors: list[dict]  # {"path", "reason", "detail"}


def check_output(path: str | os.PathLike | None, overwrite: bool, what: str = "output") -> None:
    """Refuse to overwrite an existing file unless asked; refuse a missing parent folder."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{what} {p}: is a folder; give a file name")
    if p.exists() and not overwrite:
        raise UsageError(f"{what} {p} exists; use --overwrite to replace it")
    if not p.parent.is_dir():
        raise UsageError(f"{what} {p}: folder {p.parent} does not exist")


def save_text(path: str | os.PathLike, text: str) -> None:
    """Atomic write; a failure (disk full, read-only folder) is an error that names the file."""
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise AugkitError(f"could not write {path}: {exc.strerror or exc} (no partial file was left)") from None


def format_predictions(preds: PredictionsLike, fmt: str = "csv", top_k: int = 1) -> str:
    """CSV: ``path,label,prob`` then ``label_2,prob_2 ... label_k,prob_k``; JSON Lines:
    ``{"path", "label", "prob", "top_k": [{"label", "prob"}, ...]}`` (``top_k`` when k > 1)."""
    if fmt not in FORMATS:
        raise UsageError(f"format {fmt!r} is not supported (allowed: {', '.join(FORMATS)})")
    buf = io.StringIO()
    if fmt == "csv":
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "label", "prob"] + [f"{c}_{i}" for i in range(2, top_k + 1) for c in ("label", "prob")])
        for r in preds.rows:
            w.writerow([r["path"]] + [x for lab, pr in r["top"][:top_k] for x in (lab, f"{pr:.6f}")])
    else:
        for r in preds.rows:
            obj = {"path": r["path"], "label": r["label"], "prob": round(r["prob"], 6)}
            if top_k > 1:
                obj["top_k"] = [{"label": lab, "prob": round(pr, 6)} for lab, pr in r["top"][:top_k]]
            buf.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return buf.getvalue()


def errors_path(output: str | os.PathLike) -> Path:
    """Where the errors of ``-o preds.csv`` go: ``preds.errors.csv`` beside it."""
    p = Path(output)
    return p.with_name(p.stem + ".errors.csv")


def format_errors(errors: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "reason", "detail"])
    w.writerows([e["path"], e["reason"], e.get("detail", "")] for e in errors)
    return buf.getvalue()


def write_predictions(
    preds: PredictionsLike, output: str | os.PathLike | None, fmt: str = "csv", top_k: int = 1
) -> Path | None:
    """Write atomically to ``output`` and its ``*.errors.csv`` (header only when nothing was
    skipped, so inputs = rows + errors always adds up), or to stdout when ``output`` is None.
    Returns the errors file written, if any."""
    text = format_predictions(preds, fmt, top_k)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return None
    save_text(output, text)
    ep = errors_path(output)
    save_text(ep, format_errors(preds.errors))
    return ep
