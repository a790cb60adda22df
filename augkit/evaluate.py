"""What TTA buys on labelled data: plain vs TTA vs each single view, with a paired test.

The data is a class-folder tree (``DATA/<class>/...``); labels come from the model's saved
class mapping, never from the folder order. Every number is computed on the same images,
so the plain-vs-TTA comparison is paired: the exact McNemar test looks only at images where
exactly one of the two is right.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from . import __version__
from .checkpoint import ModelMeta
from .devices import resolve_device
from .errors import AugkitError, UsageError
from .images import DEFAULT_MAX_PIXELS, scan_folder, write_image
from .inference import Progress, load_for_inference, resolve_tta, run_tta
from .outfiles import save_text
from .recipe import TTASpec
from .tta import merge_probs
from .views import View, view_to_yaml

SELECTION_NOTE = ("selected on this same data, so its accuracy is optimistic; "
                  "confirm it on held-out images before relying on it")


# ====================================================================== statistics

def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: a binomial(b + c, 1/2) test on the discordant pairs
    (``b`` images only the first classifier gets right, ``c`` only the second)."""
    n = b + c
    if n == 0:
        return 1.0
    term = tail = math.comb(n, 0)
    for i in range(min(b, c)):  # comb(n, i + 1) from comb(n, i), exactly, in integers
        term = term * (n - i) // (i + 1)
        tail += term
    return min(1.0, 2 * tail / 2 ** n)  # int / int is correctly rounded, even for huge n


def paired(plain_ok: np.ndarray, other_ok: np.ndarray) -> dict:
    b = int(np.sum(plain_ok & ~other_ok))
    c = int(np.sum(~plain_ok & other_ok))
    return {"plain_only_right": b, "other_only_right": c, "p_value": mcnemar_exact(b, c)}


def topk_correct(p: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    top = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return (top == y[:, None]).any(axis=1)


def confusion_matrix(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (y, pred), 1)
    return m


def _acc(ok: np.ndarray) -> float:
    return float(ok.mean()) if ok.size else 0.0


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean()) if len(y) else 0.0


def select_views(view_probs: np.ndarray, y: np.ndarray, merge: str = "mean") -> list[int]:
    """Greedy forward selection: start from the best single view, add the view that helps most,
    stop when accuracy no longer rises. Ties are broken by lower log-loss, then by order."""
    p = torch.from_numpy(view_probs)
    v = p.shape[0]

    def score(idx: list[int]) -> tuple[float, float]:
        m = merge_probs(p[idx], merge).numpy()
        return _acc(m.argmax(1) == y), -_nll(m, y)

    chosen: list[int] = []
    best = (-1.0, -math.inf)
    while len(chosen) < v:
        cands = [(score(chosen + [i]), -i) for i in range(v) if i not in chosen]
        (s, neg_i) = max(cands)
        if chosen and s[0] <= best[0]:
            break
        chosen.append(-neg_i)
        best = s
    return chosen


# ====================================================================== labels

def labelled_items(data: str | os.PathLike, meta: ModelMeta) -> tuple[list[str], list[int], dict]:
    """Paths and model label indices of ``DATA/<class>/...``; checks the classes against the model."""
    scan = scan_folder(data)
    if scan.flat:
        raise UsageError(f"{data}: no class folders; evaluate needs DATA/<class>/<image> (one folder a class)")
    data_classes = set(scan.classes)
    model_classes = set(meta.classes)
    extra = sorted(data_classes - model_classes)
    if extra:
        missing = sorted(model_classes - data_classes)
        raise UsageError(f"{data}: the folder's classes differ from the model's. In the folder but not the "
                         f"model: {', '.join(extra)}" + (f"; in the model but not the folder: {', '.join(missing)}"
                                                         if missing else "")
                         + f" (the model knows: {', '.join(meta.classes)})")
    paths, labels, unlabelled = [], [], []
    root = Path(data)
    for rel, cls in scan.items:
        if cls:
            paths.append(str(root / rel))
            labels.append(meta.class_to_idx[cls])
        else:
            unlabelled.append(str(root / rel))
    info = {"model": list(meta.classes), "data": sorted(data_classes),
            "missing_from_data": [c for c in meta.classes if c not in data_classes],
            "empty_folders": list(scan.empty_classes), "unlabelled": unlabelled}
    return paths, labels, info


# ====================================================================== evaluate

def evaluate(run: str | os.PathLike, data: str | os.PathLike, *, tta: TTASpec | str | None = "flip",
             top_k: int = 5, batch_size: int = 64, device: str = "cpu", workers: int | None = 0,
             max_pixels: int | None = DEFAULT_MAX_PIXELS, progress: Progress | None = None,
             on_start: Callable[[int], None] | None = None, tta_label: str | None = None) -> dict:
    """Score the run's model on a labelled folder: the report as a JSON-ready dict.

    ``workers``: decoding processes; None picks :func:`augkit.inference.default_workers`."""
    spec = tta if isinstance(tta, TTASpec) else resolve_tta(tta)
    if top_k < 1:
        raise UsageError(f"--top-k {top_k}: must be >= 1")
    dev = resolve_device(device)
    model, meta, ckpt = load_for_inference(run, dev)
    paths, labels, info = labelled_items(data, meta)
    if not paths:
        raise UsageError(f"{data}: no labelled images found")
    if on_start is not None:
        on_start(len(paths))
    res = run_tta(model, meta, paths, spec, device=dev, batch_size=batch_size, workers=workers,
                  keep_views=True, with_plain=True, max_pixels=max_pixels, progress=progress)
    y = np.asarray([labels[i] for i in res.ok], dtype=np.int64)
    if not len(y):
        raise AugkitError(f"{data}: none of the {len(paths)} images could be read:\n"
                         + "\n".join(f"  {e['path']}: {e['reason']}" for e in res.errors[:20]))
    report = score(res.view_probs, res.merged, y, res.views, res.plain_index, len(spec.views), meta.classes,
                   top_k=top_k, merge=spec.merge)
    subset = bool(info["missing_from_data"])
    return {
        "augkit_version": __version__,
        "checkpoint": str(ckpt),
        "data": str(data),
        "tta": {"spec": tta_label or spec.preset or "recipe views", "views": [v.name for v in spec.views],
                "merge": spec.merge, "beta": spec.beta,
                "resolved": spec.to_yaml()},
        "classes": {"model": info["model"], "data": info["data"], "subset": subset,
                    "missing_from_data": info["missing_from_data"], "empty_folders": info["empty_folders"]},
        "counts": {"found": len(paths) + len(info["unlabelled"]), "evaluated": int(len(y)),
                   "skipped": len(res.errors), "unlabelled": len(info["unlabelled"])},
        **report,
        "errors": res.errors,
        "unlabelled": info["unlabelled"],
    }


def score(view_probs: np.ndarray, merged: np.ndarray, y: np.ndarray, views: list[View], plain_index: int,
          n_merged: int, classes: list[str], *, top_k: int = 5, merge: str = "mean") -> dict:
    """All the metrics of a report from per-view probabilities ``(V, N, K)`` and labels ``(N,)``."""
    k_classes = len(classes)
    k = min(top_k, k_classes)
    plain = view_probs[plain_index]
    plain_ok, tta_ok = plain.argmax(1) == y, merged.argmax(1) == y
    test = paired(plain_ok, tta_ok)
    per_view = []
    for i, v in enumerate(views):
        ok = view_probs[i].argmax(1) == y
        t = paired(plain_ok, ok)
        per_view.append({"name": v.name, "accuracy": _acc(ok), "gain": _acc(ok) - _acc(plain_ok),
                         "p_value": t["p_value"], "in_merge": i < n_merged})
    per_class = []
    for c in range(k_classes):
        m = y == c
        if m.any():
            per_class.append({"class": classes[c], "n": int(m.sum()), "plain": _acc(plain_ok[m]),
                              "tta": _acc(tta_ok[m])})
    chosen = select_views(view_probs, y, merge) if len(y) else []
    sel_probs = merge_probs(torch.from_numpy(view_probs[chosen]), merge).numpy() if chosen else merged
    return {
        "accuracy": {"plain": _acc(plain_ok), "tta": _acc(tta_ok), "gain": _acc(tta_ok) - _acc(plain_ok),
                     "top_k": k, "plain_top_k": _acc(topk_correct(plain, y, k)),
                     "tta_top_k": _acc(topk_correct(merged, y, k)),
                     "plain_nll": _nll(plain, y), "tta_nll": _nll(merged, y)},
        "mcnemar": {"plain_only_right": test["plain_only_right"], "tta_only_right": test["other_only_right"],
                    "p_value": test["p_value"]},
        "views": per_view,
        "per_class": per_class,
        "confusion": {"rows": "true class", "columns": "predicted class (TTA)", "labels": list(classes),
                      "matrix": confusion_matrix(y, merged.argmax(1), k_classes).tolist()},
        "suggested_views": {"views": [views[i].name for i in chosen],
                            "yaml": {"views": [view_to_yaml(views[i]) for i in chosen], "merge": merge},
                            "accuracy": _acc(sel_probs.argmax(1) == y), "method": "greedy forward selection",
                            "note": SELECTION_NOTE},
    }


# ====================================================================== outputs

def write_report(report: dict, path: str | os.PathLike) -> None:
    save_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def draw_confusion(matrix: np.ndarray, labels: list[str], *, max_side: int = 1200) -> np.ndarray:
    """A row-normalized confusion matrix as an RGB image (OpenCV only): darker blue = more of
    the row's images; counts in the cells and class names on the axes while they fit."""
    m = np.asarray(matrix, dtype=np.int64)
    k = m.shape[0]
    cell = int(max(4, min(56, max_side // max(k, 1))))
    show_text = cell >= 24
    margin = (min(160, 10 + 8 * max(len(s) for s in labels)) if show_text and labels else 10)
    top = 30
    font = cv2.FONT_HERSHEY_SIMPLEX
    title = "rows: true class, columns: predicted"
    (title_w, _), _ = cv2.getTextSize(title, font, 0.45, 1)
    h, w = top + k * cell + margin, max(margin + k * cell + 10, title_w + 20)
    img = np.full((h, w, 3), 255, np.uint8)
    rows = m.sum(1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros(m.shape, float), where=rows > 0)
    cv2.putText(img, title, (10, 20), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for i in range(k):
        for j in range(k):
            f = frac[i, j]
            color = tuple(int(round(255 - f * (255 - c))) for c in (8, 48, 107))
            y0, x0 = top + i * cell, margin + j * cell
            cv2.rectangle(img, (x0, y0), (x0 + cell - 1, y0 + cell - 1), color, -1)
            if show_text and m[i, j]:
                txt = str(m[i, j])
                ink = (255, 255, 255) if f > 0.5 else (0, 0, 0)
                (tw, th), _ = cv2.getTextSize(txt, font, 0.35, 1)
                cv2.putText(img, txt, (x0 + (cell - tw) // 2, y0 + (cell + th) // 2), font, 0.35, ink, 1,
                            cv2.LINE_AA)
    cv2.rectangle(img, (margin - 1, top - 1), (margin + k * cell, top + k * cell), (128, 128, 128), 1)
    if show_text:
        for i, name in enumerate(labels):
            name = name[:18]
            cv2.putText(img, name, (4, top + i * cell + cell // 2 + 4), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
            # column names, written vertically below the grid
            (tw, th), _ = cv2.getTextSize(name, font, 0.35, 1)
            patch = np.full((th + 6, tw + 4, 3), 255, np.uint8)
            cv2.putText(patch, name, (2, th + 2), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
            patch = np.rot90(patch, 1)[: margin - 4]
            x0, y0 = margin + i * cell + (cell - patch.shape[1]) // 2, top + k * cell + 4
            img[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]] = patch
    return img


def write_confusion(report: dict, path: str | os.PathLike) -> None:
    conf = report["confusion"]
    try:
        write_image(draw_confusion(np.asarray(conf["matrix"]), conf["labels"]), path)
    except OSError as exc:
        raise AugkitError(f"could not write {path}: {exc.strerror or exc} (no partial file was left)") from None
