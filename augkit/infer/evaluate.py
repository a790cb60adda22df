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

from augkit import __version__
from augkit.devices import resolve_device
from augkit.errors import AugkitError, UsageError
from augkit.infer.engine import Progress, choose_tta, explicit_tta, load_for_inference, run_tta
from augkit.infer.files import save_text
from augkit.infer.gallery import confident_mistakes
from augkit.infer.options import InferOptions
from augkit.infer.options import tta_label as tta_label_of
from augkit.infer.tta import merge_probs
from augkit.io.images import write_image
from augkit.io.scan import scan_folder
from augkit.models.checkpoint import ModelMeta
from augkit.recipe.api import TTASpec
from augkit.recipe.views import View, view_to_yaml

SELECTION_NOTE = (
    "selected on this same data, so its accuracy is optimistic; confirm it on held-out images before relying on it"
)


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
    return min(1.0, 2 * tail / 2**n)  # int / int is correctly rounded, even for huge n


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


def precision_recall_f1(y: np.ndarray, pred: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per class (index 0..k-1): precision, recall, F1 and support, as scikit-learn's
    ``precision_recall_fscore_support(..., labels=range(k), zero_division=0)``."""
    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)  # counts, not a k x k matrix (k may be 5,000)
    tp = np.bincount(y[y == pred], minlength=k)[:k].astype(float)
    predicted, support = (np.bincount(v, minlength=k)[:k].astype(float) for v in (pred, y))
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(k), where=both > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def macro(prf: dict[str, np.ndarray], *, present_only: bool = False) -> dict[str, float]:
    """Unweighted means over all the model's classes, as scikit-learn's
    ``precision_recall_fscore_support(..., labels=range(k), average="macro", zero_division=0)``: a
    class with no image in the data has recall 0 (and precision 0, or less than 1 if predicted), so
    a subset of the classes scores lower than on its own. ``present_only``: over the classes with
    at least one image (support > 0) instead."""
    keep = prf["support"] > 0 if present_only else np.ones(len(prf["support"]), dtype=bool)
    return {key: float(prf[key][keep].mean()) if keep.any() else 0.0 for key in ("precision", "recall", "f1")}


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
        raise UsageError(
            f"{data}: the folder's classes differ from the model's. In the folder but not the "
            f"model: {', '.join(extra)}"
            + (f"; in the model but not the folder: {', '.join(missing)}" if missing else "")
            + f" (the model knows: {', '.join(meta.classes)})"
        )
    paths, labels, unlabelled = [], [], []
    root = Path(data)
    for rel, cls in scan.items:
        if cls:
            paths.append(str(root / rel))
            labels.append(meta.class_to_idx[cls])
        else:
            unlabelled.append(str(root / rel))
    info = {
        "model": list(meta.classes),
        "data": sorted(data_classes),
        "missing_from_data": [c for c in meta.classes if c not in data_classes],
        "empty_folders": list(scan.empty_classes),
        "unlabelled": unlabelled,
    }
    return paths, labels, info


# ====================================================================== evaluate


def evaluate(
    run: str | os.PathLike,
    data: str | os.PathLike,
    options: InferOptions | None = None,
    *,
    progress: Progress | None = None,
    on_start: Callable[[int], None] | None = None,
    on_tta: Callable | None = None,
    tta_label: str | None = None,
    **fields,
) -> dict:
    """Score the run's model on a labelled folder: the report as a JSON-ready dict.

    ``options`` (or its fields as keywords, see :class:`~augkit.infer.options.InferOptions`; here
    ``top_k`` defaults to 5). With no ``tta`` the run's own TTA is scored (its recipe's ``tta``; an
    ``.onnx``'s exported views), as ``predict`` uses it; ``tta="none"``: plain only."""
    opts = InferOptions.of(options, **fields) if options is not None else InferOptions(**{"top_k": 5, **fields})
    if opts.engine != "local":
        raise UsageError(f"evaluate runs locally (engine {opts.engine!r} is predict's only)")
    explicit_tta(opts)  # a bad --tta fails before the model loads
    dev = resolve_device(opts.device)
    model, meta, ckpt = load_for_inference(run, dev)
    spec, source = choose_tta(opts, meta, model)
    if on_tta is not None:
        on_tta(spec, source)
    paths, labels, info = labelled_items(data, meta)
    if not paths:
        raise UsageError(f"{data}: no labelled images found")
    if on_start is not None:
        on_start(len(paths))
    res = run_tta(
        model,
        meta,
        paths,
        spec,
        device=dev,
        batch_size=opts.batch_size,
        workers=opts.workers,
        keep_views=True,
        with_plain=True,
        max_pixels=opts.max_pixels,
        progress=progress,
    )
    y = np.asarray([labels[i] for i in res.ok], dtype=np.int64)
    if not len(y):
        raise AugkitError(
            f"{data}: none of the {len(paths)} images could be read:\n"
            + "\n".join(f"  {e['path']}: {e['reason']}" for e in res.errors[:20])
        )
    label = tta_label or tta_label_of(spec)
    assert res.view_probs is not None and res.plain_index is not None  # asked for: keep_views, with_plain
    top_k = opts.top_k
    report = score(
        res.view_probs,
        res.merged,
        y,
        res.views,
        res.plain_index,
        len(spec.views),
        meta.classes,
        top_k=top_k,
        merge=spec.merge,
        predictions=predictions_label(spec, label),
    )
    report["mistakes"] = confident_mistakes(res.merged, y, [paths[i] for i in res.ok], meta.classes)
    subset = bool(info["missing_from_data"])
    return {
        "augkit_version": __version__,
        "checkpoint": str(ckpt),
        "data": str(data),
        "tta": {
            "spec": label,
            "source": source,
            "views": [v.name for v in spec.views],
            "merge": spec.merge,
            "beta": spec.beta,
            "resolved": spec.to_yaml(),
        },
        "classes": {
            "model": info["model"],
            "data": info["data"],
            "subset": subset,
            "missing_from_data": info["missing_from_data"],
            "empty_folders": info["empty_folders"],
        },
        "counts": {
            "found": len(paths) + len(info["unlabelled"]),
            "evaluated": int(len(y)),
            "skipped": len(res.errors),
            "unlabelled": len(info["unlabelled"]),
        },
        **report,
        "errors": res.errors,
        "unlabelled": info["unlabelled"],
    }


def predictions_label(spec: TTASpec, label: str) -> str:
    """What the merged predictions are, for titles: plain (the identity view alone) or TTA."""
    if len(spec.views) == 1 and spec.views[0].is_identity and not spec.beta:
        return "plain predictions, no TTA"
    return f"TTA predictions: {label}, merge {spec.merge}" + (f", beta {spec.beta:g}" if spec.beta else "")


def score(
    view_probs: np.ndarray,
    merged: np.ndarray,
    y: np.ndarray,
    views: list[View],
    plain_index: int,
    n_merged: int,
    classes: list[str],
    *,
    top_k: int = 5,
    merge: str = "mean",
    predictions: str = "TTA predictions",
) -> dict:
    """All the metrics of a report from per-view probabilities ``(V, N, K)`` and labels ``(N,)``.

    Top-k is left out (None) when ``top_k`` >= the number of classes: it would be 100%. Per class:
    precision, recall and F1 of the merged (TTA) predictions (as the confusion matrix) and of the
    plain ones (``plain_precision``, ...); macro averages over all the model's classes (see
    :func:`macro`), and over the classes present in the data."""
    k_classes = len(classes)
    k = top_k if top_k < k_classes else None
    plain = view_probs[plain_index]
    plain_ok, tta_ok = plain.argmax(1) == y, merged.argmax(1) == y
    test = paired(plain_ok, tta_ok)
    per_view = []
    for i, v in enumerate(views):
        ok = view_probs[i].argmax(1) == y
        t = paired(plain_ok, ok)
        per_view.append(
            {
                "name": v.name,
                "accuracy": _acc(ok),
                "gain": _acc(ok) - _acc(plain_ok),
                "p_value": t["p_value"],
                "in_merge": i < n_merged,
            }
        )
    prf, plain_prf = (precision_recall_f1(y, p.argmax(1), k_classes) for p in (merged, plain))
    per_class = []
    for c in range(k_classes):
        m = y == c
        if m.any():
            per_class.append(
                {
                    "class": classes[c],
                    "n": int(m.sum()),
                    "plain": _acc(plain_ok[m]),
                    "tta": _acc(tta_ok[m]),
                    "precision": float(prf["precision"][c]),
                    "recall": float(prf["recall"][c]),
                    "f1": float(prf["f1"][c]),
                    "plain_precision": float(plain_prf["precision"][c]),
                    "plain_recall": float(plain_prf["recall"][c]),
                    "plain_f1": float(plain_prf["f1"][c]),
                }
            )
    chosen = select_views(view_probs, y, merge) if len(y) else []
    sel_probs = merge_probs(torch.from_numpy(view_probs[chosen]), merge).numpy() if chosen else merged
    return {
        "accuracy": {
            "plain": _acc(plain_ok),
            "tta": _acc(tta_ok),
            "gain": _acc(tta_ok) - _acc(plain_ok),
            "top_k": k,
            "plain_top_k": _acc(topk_correct(plain, y, k)) if k else None,
            "tta_top_k": _acc(topk_correct(merged, y, k)) if k else None,
            "plain_nll": _nll(plain, y),
            "tta_nll": _nll(merged, y),
        },
        "mcnemar": {
            "plain_only_right": test["plain_only_right"],
            "tta_only_right": test["other_only_right"],
            "p_value": test["p_value"],
        },
        "views": per_view,
        "per_class": per_class,
        "macro": {
            "tta": macro(prf),
            "plain": macro(plain_prf),
            "over": f"all {k_classes} classes of the model (unweighted means, as scikit-learn's average='macro' "
            "with labels=all classes, zero_division=0; a class without images counts 0)",
            "classes_without_images": int(np.sum(prf["support"] == 0)),
            "present": {"tta": macro(prf, present_only=True), "plain": macro(plain_prf, present_only=True)},
        },
        "confusion": bounded_confusion(y, merged.argmax(1), classes, predictions),
        "suggested_views": {
            "views": [views[i].name for i in chosen],
            "yaml": {"views": [view_to_yaml(views[i]) for i in chosen], "merge": merge},
            "accuracy": _acc(sel_probs.argmax(1) == y),
            "method": "greedy forward selection",
            "note": SELECTION_NOTE,
        },
    }


#: Above this many classes the report keeps a confusion sub-matrix of the most confused classes
#: and the most confused pairs, not the full K x K matrix (5,000 classes: a 276 MB report and a
#: 400-megapixel picture).
MAX_MATRIX_CLASSES = 100
TOP_CONFUSED = 50  # pairs listed when the matrix is not stored
SUB_MATRIX_CLASSES = 30  # classes of the sub-matrix (and picture) then


def bounded_confusion(y: np.ndarray, pred: np.ndarray, classes: list[str], predictions: str) -> dict:
    """The report's ``confusion``: the full matrix up to :data:`MAX_MATRIX_CLASSES` classes;
    above, ``top_confused`` (the most frequent (true, predicted) pairs, counts from a sparse count:
    memory grows with the images, not with classes squared) and the matrix of the classes in them."""
    k = len(classes)
    conf = {"rows": "true class", "columns": "predicted class (TTA)", "predictions": predictions}
    if k <= MAX_MATRIX_CLASSES:
        return {**conf, "labels": list(classes), "matrix": confusion_matrix(y, pred, k).tolist()}
    codes, counts = np.unique(y.astype(np.int64) * k + pred.astype(np.int64), return_counts=True)
    true, guess = np.divmod(codes, k)
    off = np.flatnonzero(true != guess)
    top = off[np.argsort(-counts[off], kind="stable")[:TOP_CONFUSED]]
    chosen: list[int] = []
    for i in top:
        for c in (int(true[i]), int(guess[i])):
            if c not in chosen and len(chosen) < SUB_MATRIX_CLASSES:
                chosen.append(c)
    where = {c: n for n, c in enumerate(chosen)}
    sub = np.zeros((len(chosen), len(chosen)), np.int64)
    for t, g, n in zip(true, guess, counts):
        if int(t) in where and int(g) in where:
            sub[where[int(t)], where[int(g)]] += n
    return {
        **conf,
        "labels": [classes[c] for c in chosen],
        "matrix": sub.tolist(),
        "subset": f"the {len(chosen)} classes of the most confused pairs, of {k} classes (above "
        f"{MAX_MATRIX_CLASSES} classes the full matrix is not stored)",
        "top_confused": [
            {"true": classes[int(true[i])], "predicted": classes[int(guess[i])], "count": int(counts[i])} for i in top
        ],
    }


# ====================================================================== outputs


def write_report(report: dict, path: str | os.PathLike) -> None:
    save_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")


MIN_PICTURE = 600  # px: the confusion picture's smallest side (readable at any class count)
DIAGONAL, CONFUSED = (8, 48, 107), (180, 20, 20)  # RGB at a full row: right answers, confusions


def draw_confusion(
    matrix: np.ndarray, labels: list[str], *, max_side: int = 1200, title: str = "confusion matrix"
) -> np.ndarray:
    """A row-normalized confusion matrix as an RGB image (OpenCV only): darker blue = more of
    the row's images; counts in the cells and class names on the axes while they fit. At least
    :data:`MIN_PICTURE` px a side: with few classes the cells (and their text) grow."""
    m = np.asarray(matrix, dtype=np.int64)
    k = m.shape[0]
    cell = int(max(4, min(max_side // max(k, 1), max(56, (MIN_PICTURE - 80) // max(k, 1)))))
    show_text = cell >= 24
    scale = min(1.0, max(0.35, cell / 120))  # count and label text grow with the cell
    font = cv2.FONT_HERSHEY_SIMPLEX
    label_w = max((cv2.getTextSize(s[:18], font, scale, 1)[0][0] for s in labels), default=0)
    margin = min(260, 12 + label_w) if show_text and labels else 10
    top = 72
    subtitle = "rows: true class, columns: predicted class"
    scale_note = "shade: share of the row (square-root scale); blue: right, red: confused"
    h, w = top + k * cell + margin + 8, margin + k * cell + 10
    img = np.full((max(h, MIN_PICTURE), max(w, MIN_PICTURE), 3), 255, np.uint8)
    cv2.putText(img, title[:90], (10, 22), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, subtitle, (10, 44), font, 0.42, (70, 70, 70), 1, cv2.LINE_AA)
    cv2.putText(img, scale_note, (10, 62), font, 0.42, (70, 70, 70), 1, cv2.LINE_AA)
    rows = m.sum(1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros(m.shape, float), where=rows > 0)
    for i in range(k):
        for j in range(k):
            f = math.sqrt(frac[i, j])  # square root: a 5% confusion is a visible 22% tint, not near-white
            base = DIAGONAL if i == j else CONFUSED  # right answers blue, confusions red
            color = tuple(int(round(255 - f * (255 - c))) for c in base)
            y0, x0 = top + i * cell, margin + j * cell
            cv2.rectangle(img, (x0, y0), (x0 + cell - 1, y0 + cell - 1), color, -1)
            if show_text and m[i, j]:
                txt = str(m[i, j])
                ink = (255, 255, 255) if f > 0.5 else (0, 0, 0)
                (tw, th), _ = cv2.getTextSize(txt, font, scale, 1)
                cv2.putText(img, txt, (x0 + (cell - tw) // 2, y0 + (cell + th) // 2), font, scale, ink, 1, cv2.LINE_AA)
    cv2.rectangle(img, (margin - 1, top - 1), (margin + k * cell, top + k * cell), (128, 128, 128), 1)
    if show_text:
        _axis_labels(img, labels, top, margin, cell, scale)
    return img


def _axis_labels(img: np.ndarray, labels: list[str], top: int, margin: int, cell: int, scale: float) -> None:
    """Class names left of the rows and, written vertically, below the columns."""
    font, k = cv2.FONT_HERSHEY_SIMPLEX, len(labels)
    for i, name in enumerate(labels):
        name = name[:18]
        (tw, th), _ = cv2.getTextSize(name, font, scale, 1)
        cv2.putText(img, name, (4, top + i * cell + (cell + th) // 2), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
        patch = np.full((th + 6, tw + 4, 3), 255, np.uint8)
        cv2.putText(patch, name, (2, th + 2), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
        patch = np.rot90(patch, 1)[: max(0, min(margin - 4, img.shape[0] - (top + k * cell + 4)))]
        x0, y0 = margin + i * cell + (cell - patch.shape[1]) // 2, top + k * cell + 4
        img[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] = patch


def write_confusion(report: dict, path: str | os.PathLike) -> None:
    conf = report["confusion"]
    try:
        title = (
            f"Confusion matrix of {conf.get('predictions', 'TTA predictions')} ({int(np.sum(conf['matrix']))} images)"
        )
        if "subset" in conf:  # many classes: the most confused ones only
            title = f"Most confused {len(conf['labels'])} classes of {conf.get('predictions', 'TTA predictions')}"
        write_image(draw_confusion(np.asarray(conf["matrix"]), conf["labels"], title=title), path)
    except OSError as exc:
        raise AugkitError(f"could not write {path}: {exc.strerror or exc} (no partial file was left)") from None
