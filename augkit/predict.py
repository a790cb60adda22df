"""Prediction with test-time augmentation: inputs in, class probabilities out.

The pipeline (shared with :mod:`augkit.evaluate`):

1. :func:`collect_inputs` turns files, folders and text files of paths into a list of paths.
2. DataLoader workers read and decode each image **once** (the decode policy of
   :mod:`augkit.images`) and resize + center-crop it to the model's image size
   (:func:`augkit.preprocess.eval_image`), as uint8. A bad image becomes an error row
   (path and reason); the run goes on.
3. The main process normalizes the batch with the model's saved mean/std and hands it to a
   :class:`~augkit.tta.TTAWrapper`, which makes every view on the tensor batch and runs
   them through the model together.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import cv2
import torch
from torch.utils.data import DataLoader, Dataset

from .checkpoint import ModelMeta, find_checkpoint, load_model
from .errors import AugkitError, ImageError, UsageError
from .devices import resolve_device
from .images import DECODE_POLICY, DEFAULT_MAX_PIXELS, atomic_write_text, opencv_threads, read_image, scan_folder
from .params import suggest
from .preprocess import RESIZE_POLICY, eval_image
from .recipe import TTASpec, list_builtin, load_recipe
from .tta import MERGES, TTAWrapper
from .views import MERGE_MODES, PRESETS, View, list_presets, preset_views

LIST_SUFFIXES = (".txt", ".lst")
FORMATS = ("csv", "jsonl")
Progress = Callable[[int], None]


# ====================================================================== what to run

def resolve_tta(spec: str | None, *, merge: str | None = None, beta: float | None = None) -> TTASpec:
    """``--tta``: a preset (``flip``, ``flip+shift``), a built-in recipe or a recipe file with a
    ``tta`` section; ``None`` means the plain view only. ``merge``/``beta`` override the spec's."""
    if spec is None or spec == "":
        out = TTASpec(preset_views("identity"), preset="identity")
    elif _is_file_like(spec) or spec in list_builtin() or (not _is_preset(spec) and Path(spec).is_file()):
        recipe = load_recipe(spec)
        if recipe.tta is None:
            raise UsageError(f"--tta {spec!r}: the recipe has no tta section")
        out = TTASpec(list(recipe.tta.views), recipe.tta.merge, recipe.tta.beta, recipe.tta.preset)
    else:
        unknown = [p.strip() for p in spec.split("+") if p.strip() not in PRESETS]
        if unknown:
            tta_recipes = [r for r in list_builtin() if load_recipe(r).tta is not None]
            raise UsageError(f"--tta {spec!r}: {unknown[0]!r} is not a preset, a built-in recipe or a recipe "
                             f"file{suggest(unknown[0], [*list_presets(), *tta_recipes])} (presets: "
                             f"{', '.join(list_presets())}, combined with +; recipes with a tta section: "
                             f"{', '.join(tta_recipes)}; or a .yaml file)")
        out = TTASpec(preset_views(spec), preset=spec)
    if merge is not None:
        if merge not in MERGES:
            raise UsageError(f"--merge {merge!r} is not a merge mode (allowed: {', '.join(MERGE_MODES)})")
        out.merge = merge
    if beta is not None:
        if not 0.0 <= beta <= 1.0:
            raise UsageError(f"--beta {beta!r} is out of range (allowed: 0 to 1)")
        out.beta = float(beta)
    return out


def _is_file_like(spec: str) -> bool:
    return spec.lower().endswith((".yaml", ".yml")) or "/" in spec or os.sep in spec


def _is_preset(spec: str) -> bool:
    return all(p.strip() in PRESETS for p in spec.split("+"))


def load_for_inference(run: str | os.PathLike, device: torch.device) -> tuple[torch.nn.Module, ModelMeta, Path]:
    """The model of a run, after checking that its decode and resize policies are this augkit's."""
    path = find_checkpoint(run)
    model, meta = load_model(path, device)
    if meta.decode_policy != DECODE_POLICY:
        raise UsageError(f"{path}: the model was trained with decode policy {meta.decode_policy!r}; this augkit "
                         f"decodes with {DECODE_POLICY!r}, so its predictions would not be trustworthy")
    if meta.resize_policy != RESIZE_POLICY:
        raise UsageError(f"{path}: the model was trained with resize policy {meta.resize_policy!r}; this augkit "
                         f"uses {RESIZE_POLICY!r}")
    if [meta.class_to_idx.get(c) for c in meta.classes] != list(range(len(meta.classes))):
        raise UsageError(f"{path}: the checkpoint's class_to_idx does not match its class list")
    return model, meta, path


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


# ====================================================================== inputs

def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Image paths from files, folders (searched recursively, OS litter ignored) and text files
    of paths (``.txt``/``.lst``: one path a line, ``#`` comments; relative to the list's folder).

    An input named on the command line must exist; a path inside a list that does not is kept
    and reported later as "not found". Duplicates are kept once, in first-seen order.
    """
    out: list[str] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            out.extend(str(p / rel) for rel, _ in scan_folder(p).items)
        elif p.suffix.lower() in LIST_SUFFIXES:
            out.extend(_read_list(p))
        elif p.exists():
            out.append(str(p))
        else:
            raise UsageError(f"{p}: input not found")
    seen: set[str] = set()
    uniq = [x for x in out if not (x in seen or seen.add(x))]
    if not uniq:
        raise UsageError("no images found in the inputs: " + ", ".join(map(str, inputs)))
    return uniq


def _read_list(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the list of paths ({exc})") from None
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            q = Path(line)
            out.append(str(q if q.is_absolute() else path.parent / q))
    return out


# ====================================================================== decoding (in workers)

class DecodedImages(Dataset):
    """Item ``i``: ``(i, uint8 tensor (S, S, 3), reason, detail)``; ``reason`` is "" when decoded."""

    def __init__(self, paths: Sequence[str], size: int, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.paths, self.size, self.max_pixels = list(paths), int(size), max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = eval_image(read_image(self.paths[i], max_pixels=self.max_pixels), self.size)
            return i, torch.from_numpy(img), "", ""
        except ImageError as exc:
            reason, detail = exc.reason, exc.detail
        except Exception as exc:  # a decoder or resize failure must not stop the run
            reason, detail = "decode failed", f"{type(exc).__name__}: {exc}"
        return i, torch.zeros((self.size, self.size, 3), dtype=torch.uint8), reason, detail


def quiet_opencv() -> None:
    """Silence OpenCV's own decoder warnings: augkit reports each bad image itself (path, reason)."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _worker_init(_: int) -> None:
    # cv2.setNumThreads must not be called here: in a forked child it can deadlock on the
    # parent's thread pool. run_tta sets one OpenCV thread in the parent before forking.
    torch.set_num_threads(1)
    quiet_opencv()


def to_model_input(batch: torch.Tensor, meta: ModelMeta, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalized float (N, 3, H, W) on ``device``."""
    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(meta.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(meta.std, device=device).view(1, -1, 1, 1)
    return (x - mean) / std


# ====================================================================== running the views

@dataclass
class TTARun:
    """Everything one pass over the inputs produced. Arrays are indexed by position in ``ok``."""

    paths: list[str]
    ok: list[int]
    merged: np.ndarray  # (N_ok, K) merged probabilities
    view_probs: np.ndarray | None  # (V, N_ok, K) per view of ``views``, when kept
    views: list[View]  # the views computed: the spec's, plus the identity if it was added
    plain_index: int | None
    errors: list[dict] = field(default_factory=list)  # {"path", "reason", "detail"}


def run_tta(model: torch.nn.Module, meta: ModelMeta, paths: Sequence[str], tta: TTASpec, *,
            device: torch.device, batch_size: int = 64, workers: int = 0, keep_views: bool = False,
            with_plain: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS,
            progress: Progress | None = None) -> TTARun:
    """Decode each input once, run all views of each batch through the model, merge.

    The views of a batch are concatenated and go through the model together: in one forward pass
    on a GPU; on the CPU in pieces of ``batch_size`` images, because a V-times larger CPU batch
    overflows the caches (resnet18 at 112 px, 10 views x 32 images: 1.25x slower than 10 passes
    of 32; in pieces of 32: 1.0x).
    """
    quiet_opencv()
    wrapper = TTAWrapper(model, tta.views, tta.merge, tta.beta, with_plain=with_plain,
                         max_batch=batch_size if device.type == "cpu" else None).eval()
    workers = min(workers, -(-len(paths) // batch_size))  # no idle worker processes for a few images
    loader = DataLoader(DecodedImages(paths, meta.image_size, max_pixels), batch_size=batch_size, shuffle=False,
                        num_workers=workers, worker_init_fn=_worker_init if workers else None,
                        pin_memory=device.type == "cuda")
    ok: list[int] = []
    merged: list[np.ndarray] = []
    per_view: list[np.ndarray] = []
    errors: list[dict] = []
    with torch.inference_mode(), opencv_threads(1 if workers else cv2.getNumThreads()):
        for idx, images, errs, details in loader:
            good = [j for j, e in enumerate(errs) if not e]
            errors.extend({"path": paths[int(idx[j])], "reason": e, "detail": details[j]}
                          for j, e in enumerate(errs) if e)
            if good:
                sel = images if len(good) == len(errs) else images[good]
                vp = wrapper.view_probs(to_model_input(sel, meta, device))
                merged.append(wrapper.merge_views(vp).cpu().numpy())
                if keep_views:
                    per_view.append(vp.cpu().numpy())
                ok.extend(int(idx[j]) for j in good)
            if progress is not None:
                progress(len(errs))
    k, v = len(meta.classes), len(wrapper.all_views)
    all_merged = np.concatenate(merged) if merged else np.zeros((0, k), np.float32)
    all_views = None
    if keep_views:  # (V, N, K) float32: evaluate keeps 4 * V * N * K bytes
        all_views = np.concatenate(per_view, axis=1) if per_view else np.zeros((v, 0, k), np.float32)
    return TTARun(list(paths), ok, all_merged, all_views, list(wrapper.all_views), wrapper.plain_index, errors)


# ====================================================================== predict

@dataclass
class Predictions:
    classes: list[str]
    rows: list[dict]  # {"path", "label", "prob", "top": [(label, prob), ...]} in input order
    errors: list[dict]
    tta: TTASpec
    checkpoint: str

    @property
    def counts(self) -> dict:
        return {"inputs": len(self.rows) + len(self.errors), "predicted": len(self.rows),
                "skipped": len(self.errors)}


def predict(run: str | os.PathLike, inputs: Sequence[str | os.PathLike], *, tta: TTASpec | str | None = None,
            top_k: int = 1, batch_size: int = 64, device: str = "cpu", workers: int = 0,
            max_pixels: int | None = DEFAULT_MAX_PIXELS, progress: Progress | None = None,
            on_start: Callable[[int], None] | None = None) -> Predictions:
    """Predict every input with the run's model under ``tta`` (a spec, a ``--tta`` string or None)."""
    spec = tta if isinstance(tta, TTASpec) else resolve_tta(tta)
    dev = resolve_device(device)
    model, meta, path = load_for_inference(run, dev)
    if not 1 <= top_k <= len(meta.classes):
        raise UsageError(f"--top-k {top_k}: the model has {len(meta.classes)} classes")
    paths = collect_inputs(inputs)
    if on_start is not None:
        on_start(len(paths))
    res = run_tta(model, meta, paths, spec, device=dev, batch_size=batch_size, workers=workers,
                  max_pixels=max_pixels, progress=progress)
    rows = []
    for i, p in zip(res.ok, res.merged):
        order = np.argsort(-p, kind="stable")[:top_k]
        top = [(meta.classes[c], float(p[c])) for c in order]
        rows.append({"path": paths[i], "label": top[0][0], "prob": top[0][1], "top": top})
    return Predictions(list(meta.classes), rows, res.errors, spec, str(path))


def format_predictions(preds: Predictions, fmt: str = "csv", top_k: int = 1) -> str:
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


def write_predictions(preds: Predictions, output: str | os.PathLike | None, fmt: str = "csv",
                      top_k: int = 1) -> Path | None:
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


def save_text(path: str | os.PathLike, text: str) -> None:
    """Atomic write; a failure (disk full, read-only folder) is an error that names the file."""
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise AugkitError(f"could not write {path}: {exc.strerror or exc} (no partial file was left)") from None
