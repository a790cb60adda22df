"""``augkit report``: one self-contained HTML file about a run, to share.

It reads what ``augkit train`` wrote in RUN_DIR (``settings.yaml``, ``metrics.csv``, ``curves.png``,
``lr_find.png``) and, when given, an ``augkit evaluate`` report (``report.json``): the accuracy
table (plain vs TTA vs each view, with the McNemar test), per-class precision/recall/F1, the
confusion matrix as a shaded table, thumbnails of the most confident mistakes named by file, and a
picture of the TTA views on one evaluated image. Every picture is embedded as a PNG data URI: the
file needs no server and fetches nothing when opened.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from augkit import __version__
from augkit.errors import ImageError, UsageError
from augkit.io.fileio import atomic_write_text
from augkit.io.images import read_image
from augkit.io.preprocess import eval_image
from augkit.training.config import CURVES, METRICS, SETTINGS

#: mistakes shown as thumbnails (the report lists more; a page of 24 is what people look at)
MAX_MISTAKES = 24
THUMB = 112  # px, a thumbnail's side
#: the confusion matrix is a table up to this many classes; beyond, the most confused pairs are listed
MAX_CONFUSION_CLASSES = 30
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}img{max-width:100%}.muted{color:#666}
.grid{display:flex;flex-wrap:wrap;gap:.5rem}.grid figure{margin:0;width:140px;font-size:.75rem}
.grid figcaption{word-break:break-all}.cm td{min-width:2.2rem;text-align:center}
"""


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    path: Path
    images: int
    sections: list[str] = field(default_factory=list)


def _png(img_rgb: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise UsageError("could not encode a picture for the report")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _png_file(path: Path) -> str | None:
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG"):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _e(v: Any) -> str:
    return html.escape(str(v))


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.2f}%"


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]], left: int = 1, cls: str = "") -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def _settings_section(settings: dict) -> str:
    opts = settings.get("augkit_train") or {}
    resolved = settings.get("resolved") or {}
    keys = ("data", "arch", "weights", "recipe", "epochs", "batch_size", "lr", "image_size", "schedule", "seed")
    rows = [(f"<b>{_e(k)}</b>", _e(opts[k])) for k in keys if k in opts]
    for k, sub in (("device", None), ("precision", "name"), ("freeze", "mode")):
        v = resolved.get(k)
        if isinstance(v, dict) and sub:
            v = v.get(sub)
        if v is not None:
            rows.append((f"<b>{_e(k)}</b>", _e(v)))
    dump = yaml.safe_dump(settings, sort_keys=False, allow_unicode=True)
    extra = f"<details><summary>all settings (settings.yaml)</summary><pre>{_e(dump)}</pre></details>"
    return "<h2>Settings</h2>" + (_table(("setting", "value"), rows, left=2) if rows else "") + extra


def _metrics_section(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = [
        c
        for c in ("epoch", "phase", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "data_wait")
        if c in rows[0]
    ]
    body = [[_e(r.get(c, "")) for c in cols] for r in rows]
    return "<h2>Epochs</h2>" + _table(cols, body, left=2)


def _accuracy_section(rep: dict) -> str:
    acc, mc = rep.get("accuracy", {}), rep.get("mcnemar", {})
    tta = rep.get("tta", {})
    out = [f"<h2>Evaluation: {_e(rep.get('data', ''))}</h2>"]
    counts = rep.get("counts", {})
    out.append(f"<p>{_e(counts.get('evaluated', '?'))} images evaluated; TTA {_e(tta.get('spec', ''))} "
               f"({len(tta.get('views', []))} views, merge {_e(tta.get('merge', ''))}).</p>")  # fmt: skip
    out.append(_table(("", "accuracy", "log-loss"), [
        ("plain", _pct(acc.get("plain")), _e(f"{acc.get('plain_nll', float('nan')):.4f}")),
        ("TTA", _pct(acc.get("tta")), _e(f"{acc.get('tta_nll', float('nan')):.4f}")),
    ]))  # fmt: skip
    if mc:
        p_value = float(mc.get("p_value", 1.0))
        out.append(f"<p>Gain {100 * float(acc.get('gain', 0)):+.2f} points; exact McNemar p = {p_value:.3g} "
                   f"(plain only right: {_e(mc.get('plain_only_right'))}, TTA only right: {_e(mc.get('tta_only_right'))}).</p>")  # fmt: skip
    views = rep.get("views") or []
    if views:
        out.append("<h3>Each view alone (paired with plain)</h3>")
        out.append(_table(("view", "accuracy", "gain", "p"), [
            (_e(v["name"]), _pct(v.get("accuracy")), f"{100 * float(v.get('gain', 0)):+.2f} pt", _e(f"{v.get('p_value', 1):.3g}"))
            for v in views
        ]))  # fmt: skip
    per_class = rep.get("per_class") or []
    if per_class:
        out.append("<h3>Per class (TTA predictions)</h3>")
        out.append(_table(("class", "images", "plain", "TTA", "precision", "recall", "F1"), [
            (_e(c.get("class")), _e(c.get("n")), _pct(c.get("plain")), _pct(c.get("tta")),
             _pct(c.get("precision")), _pct(c.get("recall")), _pct(c.get("f1")))
            for c in per_class
        ]))  # fmt: skip
    return "".join(out)


def _confusion_section(conf: dict) -> str:
    labels, matrix = conf.get("labels") or [], np.asarray(conf.get("matrix") or [], dtype=np.int64)
    if not labels or matrix.size == 0:
        return ""
    title = f"<h2>Confusion (rows: {_e(conf.get('rows', 'true class'))}; columns: {_e(conf.get('columns', 'prediction'))})</h2>"
    if len(labels) > MAX_CONFUSION_CLASSES:
        off = [(int(matrix[i, j]), labels[i], labels[j]) for i in range(len(labels)) for j in range(len(labels))
               if i != j and matrix[i, j] > 0]  # fmt: skip
        off.sort(reverse=True)
        rows = [(_e(t), _e(p), _e(n)) for n, t, p in off[:30]]
        return (
            title
            + f"<p>{len(labels)} classes: the 30 most frequent confusions.</p>"
            + _table(("true", "predicted", "images"), rows, left=2)
        )
    share = matrix / np.maximum(1, matrix.sum(1, keepdims=True))
    cells = []
    for i, lab in enumerate(labels):
        row = [f"<b>{_e(lab)}</b>"]
        for j in range(len(labels)):
            s = float(share[i, j])
            # diagonal in blue, confusions in red: a confusion of 5% of a row is already clearly tinted
            hue = "33,102,172" if i == j else "202,0,32"
            alpha = 0 if matrix[i, j] == 0 else 0.15 + 0.85 * min(1.0, s if i == j else 4 * s)
            color = "#fff" if alpha > 0.6 else "#222"
            row.append(
                f'<span style="display:block;background:rgba({hue},{alpha:.2f});color:{color}">{int(matrix[i, j]) or "."}</span>'
            )
        cells.append(row)
    return (
        title
        + _table([""] + list(labels), cells, cls="cm")
        + '<p class="muted">Shading: share of the row; blue on the diagonal, red for confusions (4x stronger, so rare ones show).</p>'
    )


def _thumb(path: str, size: int) -> np.ndarray | None:
    try:
        return eval_image(read_image(path, min_side=size), size, path=path)
    except (ImageError, OSError, ValueError):
        return None


def _mistakes_section(rep: dict) -> tuple[str, int]:
    mistakes = (rep.get("mistakes") or [])[:MAX_MISTAKES]
    figs, n = [], 0
    for m in mistakes:
        img = _thumb(m["path"], THUMB)
        if img is None:
            continue
        n += 1
        figs.append(
            f'<figure><img src="{_png(img)}" alt="{_e(os.path.basename(m["path"]))}" width="{THUMB}" height="{THUMB}">'
            f"<figcaption><b>{_e(os.path.basename(m['path']))}</b><br>true {_e(m.get('true'))}, "
            f"predicted {_e(m.get('predicted'))} ({_pct(m.get('prob'))})</figcaption></figure>"
        )
    if not figs:
        return "", 0
    return "<h2>Most confident mistakes</h2><div class=grid>" + "".join(figs) + "</div>", n


def tta_views(image_path: str, tta_yaml: dict, size: int) -> list[tuple[str, np.ndarray]]:
    """One image under each view of the report's TTA: (view name, RGB picture) pairs."""
    from augkit.recipe.api import parse_tta
    from augkit.report.views import view_tiles  # deferred: imports torch

    try:
        img = read_image(image_path, min_side=size)
    except (ImageError, OSError):
        return []
    return view_tiles(img, parse_tta(tta_yaml, "report.json", None), size)


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def build_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    evaluation: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
) -> Report:
    """Write the HTML report of ``run_dir`` (and of an ``augkit evaluate`` report.json) to ``out``."""
    run, out = Path(run_dir), Path(out)
    if not (run / SETTINGS).is_file():
        raise UsageError(f"{run}: not a run folder of augkit train (no {SETTINGS})")
    if out.exists() and not overwrite:
        raise UsageError(f"{out} exists (use --overwrite to replace it)")
    settings = yaml.safe_load((run / SETTINGS).read_text(encoding="utf-8")) or {}
    rep: dict = {}
    if evaluation is not None:
        if not Path(evaluation).is_file():
            raise UsageError(
                f"{evaluation}: evaluate report not found (write one with augkit evaluate ... --report FILE)"
            )
        try:
            rep = json.loads(Path(evaluation).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"{evaluation}: not an augkit evaluate report ({e})") from None
        if not isinstance(rep, dict) or "accuracy" not in rep:
            raise UsageError(f"{evaluation}: not an augkit evaluate report (no 'accuracy')")
    sections, images = [], 0
    body = [f"<h1>augkit run: {_e(run.resolve().name)}</h1>",
            f'<p class="muted">{_e(run.resolve())} · augkit {_e(__version__)}</p>']  # fmt: skip
    body.append(_settings_section(settings))
    sections.append("settings")
    for name, title in ((CURVES, "Training curves"), ("lr_find.png", "Learning-rate range test")):
        uri = _png_file(run / name)
        if uri:
            body.append(f'<h2>{title}</h2><img src="{uri}" alt="{_e(name)}">')
            sections.append(name)
            images += 1
    body.append(_metrics_section(_read_metrics(run / METRICS)))
    if rep:
        body.append(_accuracy_section(rep))
        sections.append("evaluation")
        conf = _confusion_section(rep.get("confusion") or {})
        if conf:
            body.append(conf)
            sections.append("confusion")
        mist, n = _mistakes_section(rep)
        if mist:
            body.append(mist)
            sections.append("mistakes")
            images += n
        first = next(iter(m["path"] for m in rep.get("mistakes") or []), None) or _first_image(rep)
        resolved = (rep.get("tta") or {}).get("resolved")
        views = tta_views(first, resolved, THUMB) if first and resolved else []
        if views:
            figs = "".join(
                f'<figure><img src="{_png(img)}" alt="{_e(name)}"><figcaption>{_e(name)}</figcaption></figure>'
                for name, img in views
            )
            body.append(
                f"<h2>The TTA views</h2><p>{_e(os.path.basename(str(first)))}, as the model sees it in each view.</p>"
            )
            body.append(f"<div class=grid>{figs}</div>")
            sections.append("tta views")
            images += len(views)
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>augkit report: {_e(run.name)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")  # fmt: skip
    atomic_write_text(out, page)
    return Report(out, images, sections)


def _first_image(rep: dict) -> str | None:
    preds = (rep.get("confusion") or {}).get("predictions")
    if isinstance(preds, list) and preds and isinstance(preds[0], dict):
        return preds[0].get("path")
    return None
