"""The inference engine shared by ``predict``, ``evaluate`` and ``predict --engine ray``.

1. :func:`resolve_tta` says what to run; :func:`load_for_inference` loads the run's model after
   checking that this augkit decodes and resizes as training did.
2. :func:`collect_inputs` turns files, folders and text files of paths into a list of paths
   (one entry per file however it was spelled).
3. DataLoader workers (single-threaded) read and decode each image **once**, under the
   checkpoint's decode policy, and resize + center-crop it to the model's image size
   (:func:`augkit.io.preprocess.eval_image`), as uint8. A bad image becomes an error row (path and
   reason); the run goes on.
4. :func:`run_tta` normalizes each batch with the model's saved mean/std and hands it to a
   :class:`~augkit.infer.tta.TTAWrapper`, which makes every view on the tensor batch and runs them
   through the model together; :func:`top_row` turns merged probabilities into output rows.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from augkit.devices import cpu_threads, usable_cores
from augkit.devices import default_workers as devices_default_workers
from augkit.errors import ImageError, UsageError
from augkit.infer.onnx_backend import OnnxModel, OnnxRunner, is_onnx_path
from augkit.infer.options import NO_TTA, SOURCE_OPTION, SOURCE_PLAIN, InferOptions
from augkit.infer.tta import MERGES, TTAWrapper
from augkit.io.fileio import read_bytes
from augkit.io.images import (
    DCT_MARGIN,
    DECODE_POLICY,
    LEGACY_DECODE_POLICIES,
    decode_policy_margin,
    decode_policy_reduces,
    opencv_threads,
    read_image,
)
from augkit.io.preprocess import RESIZE_POLICY, eval_image
from augkit.io.scan import scan_folder
from augkit.limits import DEFAULT_MAX_PIXELS
from augkit.models.checkpoint import ModelMeta, find_checkpoint, load_model
from augkit.recipe.api import TTASpec, list_builtin, load_recipe, parse_recipe
from augkit.recipe.params import suggest
from augkit.recipe.views import MERGE_MODES, PRESETS, View, list_presets, preset_views

LIST_SUFFIXES = (".txt", ".lst")
#: A list of paths larger than this is refused before it is read (about a million paths).
MAX_LIST_BYTES = 64 * 2**20
Progress = Callable[[int], None]


# ====================================================================== what to run


def resolve_tta(spec: str | None, *, merge: str | None = None, beta: float | None = None) -> TTASpec:
    """``--tta``: a preset (``flip``, ``flip+shift``), a built-in recipe or a recipe file with a
    ``tta`` section; ``None``, ``none`` or ``identity`` mean the plain view only. ``merge``/``beta``
    override the spec's. (The run's *default* TTA, when no ``--tta`` is given, is :func:`choose_tta`'s.)"""
    if spec is None or spec.strip() in ("", *NO_TTA):
        out = TTASpec(preset_views("identity"), preset="identity")
    elif _is_file_like(spec) or spec in list_builtin() or (not _is_preset(spec) and Path(spec).is_file()):
        recipe = load_recipe(spec)
        if recipe.tta is None:
            raise UsageError(f"--tta {spec!r}: the recipe has no tta section")
        out = TTASpec(list(recipe.tta.views), recipe.tta.merge, recipe.tta.beta, recipe.tta.preset)
    else:
        _check_presets(spec)
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


def default_tta(meta: ModelMeta, model: object = None) -> tuple[TTASpec, str]:
    """The run's own TTA and where it came from: an exported ``.onnx`` merges the views it was
    exported with; a checkpoint, its training recipe's ``tta`` section; else the plain view."""
    if isinstance(model, OnnxModel):
        return model.info.tta, "the views this .onnx was exported with"
    if meta.recipe_text:
        name = meta.recipe_name or "the run"
        recipe = parse_recipe(meta.recipe_text, f"{name}'s recipe (saved in the checkpoint)")
        if recipe.tta is not None:
            return recipe.tta, f"the run's recipe {name!r}"
    return TTASpec(preset_views("identity"), preset="identity"), SOURCE_PLAIN


def explicit_tta(opts: InferOptions) -> TTASpec | None:
    """The TTA ``opts`` names (resolved now, so a bad ``--tta`` fails before a model loads), or
    None when it leaves the choice to the run."""
    if isinstance(opts.tta, TTASpec):
        return _override(replace(opts.tta), opts.merge, opts.beta)
    if opts.tta is None:
        return None
    return resolve_tta(opts.tta, merge=opts.merge, beta=opts.beta)


def choose_tta(opts: InferOptions, meta: ModelMeta, model: object = None) -> tuple[TTASpec, str]:
    """The one TTA rule of predict, evaluate and export: ``--tta`` when given (``none`` or
    ``identity``: plain), else the run's own (:func:`default_tta`); ``--merge``/``--beta`` apply
    to either. Returns the spec and where it came from."""
    spec = explicit_tta(opts)
    if spec is not None:
        return spec, SOURCE_OPTION
    spec, source = default_tta(meta, model)
    return _override(replace(spec, views=list(spec.views)), opts.merge, opts.beta), source


def _override(spec: TTASpec, merge: str | None, beta: float | None) -> TTASpec:
    if merge is not None:
        spec.merge = merge
    if beta is not None:
        spec.beta = float(beta)
    return spec


def _check_presets(spec: str) -> None:
    unknown = [p.strip() for p in spec.split("+") if p.strip() not in PRESETS]
    if unknown:
        tta_recipes = [r for r in list_builtin() if load_recipe(r).tta is not None]
        raise UsageError(
            f"--tta {spec!r}: {unknown[0]!r} is not a preset, a built-in recipe or a recipe "
            f"file{suggest(unknown[0], [*list_presets(), *tta_recipes])} (presets: "
            f"{', '.join(list_presets())}, combined with +; recipes with a tta section: "
            f"{', '.join(tta_recipes)}; or a .yaml file)"
        )


def _is_file_like(spec: str) -> bool:
    return spec.lower().endswith((".yaml", ".yml")) or "/" in spec or os.sep in spec


def _is_preset(spec: str) -> bool:
    return all(p.strip() in PRESETS for p in spec.split("+"))


def default_workers(device: torch.device | str = "cpu") -> int:
    """Decoding workers when ``--workers`` is not given, for predict and evaluate: the ``predict``
    role of the one rule, :func:`augkit.devices.default_workers` (which says why)."""
    return devices_default_workers(device, "predict", usable_cores())


Model = torch.nn.Module | OnnxModel


def load_for_inference(run: str | os.PathLike, device: torch.device) -> tuple[Model, ModelMeta, Path]:
    """The model of a run (validated in full), or of an exported ``.onnx`` file (run by
    onnxruntime, :mod:`augkit.infer.onnx_backend`), after checking that this augkit decodes and
    resizes its inputs exactly as training did."""
    if is_onnx_path(run):
        if not Path(run).is_file():
            raise UsageError(f"{run}: exported model not found")
        onnx = OnnxModel(run, device)
        check_policies(onnx.meta, run)
        return onnx, onnx.meta, Path(run)
    path = find_checkpoint(run)
    model, meta = load_model(path, device)
    check_policies(meta, path)
    return model, meta, path


def check_policies(meta: ModelMeta, path: str | os.PathLike) -> None:
    """A decode policy this augkit decodes exactly (the current one or an earlier one it still
    honours, see :data:`LEGACY_DECODE_POLICIES`) and this augkit's resize policy; anything else
    would make predictions untrustworthy."""
    if meta.decode_policy and meta.decode_policy not in (DECODE_POLICY, *LEGACY_DECODE_POLICIES):
        raise UsageError(
            f"{path}: the model was trained with decode policy {meta.decode_policy!r}; this augkit "
            f"decodes with {DECODE_POLICY!r} (or, for older models, "
            f"{' or '.join(map(repr, LEGACY_DECODE_POLICIES))}), so its predictions would not be "
            "trustworthy"
        )
    if meta.resize_policy != RESIZE_POLICY:
        raise UsageError(
            f"{path}: the model was trained with resize policy {meta.resize_policy!r}; this augkit "
            f"uses {RESIZE_POLICY!r}"
        )


def decodes_reduced(meta: ModelMeta) -> bool:
    """Whether JPEGs may be decoded at reduced size (DCT scaling) for this model: only when it
    was trained that way. A checkpoint without a decode policy predates it: full decoding."""
    return bool(meta.decode_policy) and decode_policy_reduces(meta.decode_policy)


# ====================================================================== inputs


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Image paths from files, folders (searched recursively, OS litter ignored) and text files
    of paths (``.txt``/``.lst``: one path a line, ``#`` comments; relative to the list's folder).

    An input named on the command line must exist; a path inside a list that does not is kept
    and reported later as "not found". A file named twice (``a/x.png``, ``$PWD/a/x.png``,
    ``a/../a/x.png``) is kept once, in first-seen order and first-seen spelling. Special files
    (FIFOs, devices) are kept as inputs and reported when read, without blocking.
    """
    out: list[str] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            scan = scan_folder(p)
            out.extend(str(p / rel) for rel, _ in scan.items)
            out.extend(str(p / rel) for rel, _ in scan.unreadable)  # reported when read: never lost silently
        elif p.suffix.lower() in LIST_SUFFIXES and p.exists():
            out.extend(_read_list(p))
        elif p.exists():
            out.append(str(p))
        else:
            raise UsageError(f"{p}: input not found")
    uniq = unique_paths(out)
    if not uniq:
        raise UsageError("no images found in the inputs: " + ", ".join(map(str, inputs)))
    return uniq


def same_file_key(path: str) -> str:
    """One key per directory entry however it is spelled: the folder resolved (symlinks, ``..``),
    the file name kept (two differently named links to one file stay two inputs)."""
    folder, name = os.path.split(path)
    return os.path.join(os.path.realpath(folder or "."), name)


def unique_paths(paths: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for p in paths:
        key = same_file_key(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _read_list(path: Path) -> list[str]:
    """The paths in a list file; a FIFO, device or huge file is refused before it is read."""
    try:
        text = read_bytes(path, max_bytes=MAX_LIST_BYTES).decode("utf-8")
    except ImageError as exc:
        raise UsageError(
            f"{path}: cannot read the list of paths ({exc.reason}" + (f": {exc.detail}" if exc.detail else "") + ")"
        ) from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: cannot read the list of paths (not UTF-8 text: {exc.reason})") from None
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            q = Path(line)
            out.append(str(q if q.is_absolute() else path.parent / q))
    return out


# ====================================================================== decoding (in workers)


class DecodedImages(Dataset):
    """Item ``i``: ``(i, uint8 tensor (S, S, 3), reason, detail)``; ``reason`` is "" when decoded.

    ``reduced``: JPEGs are decoded at the largest DCT reduction whose short side is still at
    least ``margin`` x ``size`` (then resized exactly as a full decode would be); only for models
    trained so, with the margin of the model's decode policy (:func:`decode_policy_margin`).
    """

    def __init__(
        self,
        paths: Sequence[str],
        size: int,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        reduced: bool = False,
        margin: int = DCT_MARGIN,
    ):
        self.paths, self.size, self.max_pixels, self.reduced = list(paths), int(size), max_pixels, reduced
        self.margin = margin

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = read_image(
                self.paths[i], max_pixels=self.max_pixels, min_side=self.size, reduced=self.reduced, margin=self.margin
            )
            return i, torch.from_numpy(eval_image(img, self.size)), "", ""
        except ImageError as exc:
            reason, detail = exc.reason, exc.detail
        except Exception as exc:  # a decoder or resize failure must not stop the run
            reason, detail = "decode failed", f"{type(exc).__name__}: {exc}"
        return i, torch.zeros((self.size, self.size, 3), dtype=torch.uint8), reason, detail


def quiet_opencv() -> None:
    """Silence OpenCV's own decoder warnings: augkit reports each bad image itself (path, reason)."""
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


@dataclass
class RunOptions:
    """How :func:`run_tta` runs. ``workers``: decoding processes (None: :func:`default_workers`);
    ``set_threads``: apply the thread rule (a Ray actor leaves Ray's per-actor setting)."""

    device: torch.device
    batch_size: int = 64  # images per batch; also the most images a CPU forward pass takes
    workers: int | None = 0
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    keep_views: bool = False
    with_plain: bool = False
    set_threads: bool = True


class TorchRunner:
    """The views of a batch through a PyTorch model (:class:`~augkit.infer.tta.TTAWrapper`), from
    uint8 images normalized with the model's mean/std; its ONNX twin is
    :class:`~augkit.infer.onnx_backend.OnnxRunner`."""

    def __init__(self, model: torch.nn.Module, meta: ModelMeta, tta: TTASpec, device: torch.device, opt: RunOptions):
        self.wrapper = TTAWrapper(
            model,
            tta.views,
            tta.merge,
            tta.beta,
            with_plain=opt.with_plain,
            max_batch=opt.batch_size if device.type == "cpu" else None,
        ).eval()
        self.meta, self.device = meta, device
        self.all_views, self.plain_index = self.wrapper.all_views, self.wrapper.plain_index

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        return self.wrapper.view_probs(to_model_input(images, self.meta, self.device))

    def merge_views(self, p: torch.Tensor) -> torch.Tensor:
        return self.wrapper.merge_views(p)


def make_runner(model: Model, meta: ModelMeta, tta: TTASpec, opt: RunOptions) -> TorchRunner | OnnxRunner:
    """What runs the views: PyTorch, or an export's own views (refused when it lacks one)."""
    if isinstance(model, OnnxModel):
        return model.runner(tta, with_plain=opt.with_plain)
    return TorchRunner(model, meta, tta, opt.device, opt)


def run_tta(
    model: Model,
    meta: ModelMeta,
    paths: Sequence[str],
    tta: TTASpec,
    *,
    device: torch.device,
    progress: Progress | None = None,
    **options,
) -> TTARun:
    """Decode each input once, run all views of each batch through the model, merge.

    ``options`` are :class:`RunOptions` fields. The views of a batch are concatenated and go
    through the model together: in one forward pass on a GPU; on the CPU in pieces of
    ``batch_size`` images, because a V-times larger CPU batch overflows the caches (resnet18 at
    112 px, 10 views x 32 images: 1.25x slower than 10 passes of 32; in pieces of 32: 1.0x).
    Intra-op threads follow :func:`augkit.devices.cpu_threads`: cores minus busy workers.
    """
    opt = RunOptions(device=device, **options)
    quiet_opencv()
    runner = make_runner(model, meta, tta, opt)
    workers = default_workers(device) if opt.workers is None else opt.workers
    workers = min(workers, -(-len(paths) // opt.batch_size))  # no idle worker processes for a few images
    loader = DataLoader(
        DecodedImages(
            paths, meta.image_size, opt.max_pixels, decodes_reduced(meta), decode_policy_margin(meta.decode_policy)
        ),
        batch_size=opt.batch_size,
        shuffle=False,
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        pin_memory=device.type == "cuda",
    )
    acc = _Collected(paths)
    threads = cpu_threads(workers, device) if opt.set_threads else contextlib.nullcontext()
    try:
        with torch.inference_mode(), opencv_threads(1 if workers else cv2.getNumThreads()), threads:
            for idx, images, errs, details in loader:
                good = acc.add_errors(idx, errs, details)
                if good:
                    sel = images if len(good) == len(errs) else images[good]
                    vp = runner.probs(sel)
                    acc.add(idx, good, runner.merge_views(vp), vp if opt.keep_views else None)
                if progress is not None:
                    progress(len(errs))
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the finished batches go with it (predict keeps them)
        exc.partial = acc.result(len(meta.classes), runner, opt.keep_views)  # type: ignore[attr-defined]
        raise
    return acc.result(len(meta.classes), runner, opt.keep_views)


class _Collected:
    """Per-batch results of :func:`run_tta`, gathered in order."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)
        self.ok: list[int] = []
        self.merged: list[np.ndarray] = []
        self.per_view: list[np.ndarray] = []
        self.errors: list[dict] = []

    def add_errors(self, idx, errs, details) -> list[int]:
        """Record the batch's failed images; returns the positions of the decoded ones."""
        self.errors.extend(
            {"path": self.paths[int(idx[j])], "reason": e, "detail": details[j]} for j, e in enumerate(errs) if e
        )
        return [j for j, e in enumerate(errs) if not e]

    def add(self, idx, good: list[int], merged: torch.Tensor, view_probs: torch.Tensor | None) -> None:
        self.merged.append(merged.cpu().numpy())
        if view_probs is not None:
            self.per_view.append(view_probs.cpu().numpy())
        self.ok.extend(int(idx[j]) for j in good)

    def result(self, k: int, wrapper: TorchRunner | OnnxRunner, keep_views: bool) -> TTARun:
        v = len(wrapper.all_views)
        merged = np.concatenate(self.merged) if self.merged else np.zeros((0, k), np.float32)
        views = None
        if keep_views:  # (V, N, K) float32: evaluate keeps 4 * V * N * K bytes
            views = np.concatenate(self.per_view, axis=1) if self.per_view else np.zeros((v, 0, k), np.float32)
        return TTARun(self.paths, self.ok, merged, views, list(wrapper.all_views), wrapper.plain_index, self.errors)


@dataclass
class Predictions:
    """What every predict engine returns; :mod:`augkit.infer.files` writes it."""

    classes: list[str]
    rows: list[dict]  # {"path", "label", "prob", "top": [(label, prob), ...]} in input order
    errors: list[dict]
    tta: TTASpec
    checkpoint: str
    tta_source: str = SOURCE_OPTION  # where the TTA came from (:func:`choose_tta`)

    @property
    def counts(self) -> dict:
        return {"inputs": len(self.rows) + len(self.errors), "predicted": len(self.rows), "skipped": len(self.errors)}


def top_row(path: str, probs: np.ndarray, classes: Sequence[str], top_k: int) -> dict:
    """One prediction row: ``{"path", "label", "prob", "top": [(label, prob), ...]}``."""
    order = np.argsort(-probs, kind="stable")[:top_k]
    top = [(classes[c], float(probs[c])) for c in order]
    return {"path": path, "label": top[0][0], "prob": top[0][1], "top": top}


def check_top_k(top_k: int, meta: ModelMeta) -> None:
    if not 1 <= top_k <= len(meta.classes):
        raise UsageError(f"--top-k {top_k}: the model has {len(meta.classes)} classes")
