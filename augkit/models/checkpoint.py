"""Checkpoints: safe to load (``torch.load(weights_only=True)``), written atomically, and
carrying everything prediction needs (classes, image size, normalization, decode policy,
the recipe text, versions).

A checkpoint is a file a user can edit, truncate or replace, so :func:`load_checkpoint`
validates it fully before anything uses it: every metadata field's type and range, the class
list against the classification head, the state dict's shape. Each problem is a
:class:`~augkit.errors.UsageError` (exit 2) naming the file and what is wrong.
"""

from __future__ import annotations

import io
import math
import os
import stat
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import torch
from torch import nn

from augkit import __version__
from augkit.errors import UsageError
from augkit.io.fileio import atomic_write_bytes
from augkit.models.archs import arch_head_name, arch_source, build_model, check_arch

FORMAT = "augkit-checkpoint-v1"
BEST, LAST = "best.pt", "last.pt"
#: Bounds on a saved image size: larger ones would allocate gigabytes per batch at prediction time.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 2048


@dataclass
class ModelMeta:
    arch: str
    classes: list[str]
    class_to_idx: dict[str, int]
    image_size: int
    mean: list[float]
    std: list[float]
    decode_policy: str  # "" in a checkpoint that predates the field: full decoding
    resize_policy: str
    recipe_text: str = ""
    recipe_name: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    arch_source: str = ""  # "torchvision" or "timm" (from arch when empty): the library that rebuilds it

    def __post_init__(self) -> None:
        if not self.arch_source and isinstance(self.arch, str):
            self.arch_source = arch_source(self.arch)

    @classmethod
    def from_dict(cls, d: dict, source: str | os.PathLike = "checkpoint") -> ModelMeta:
        """A validated :class:`ModelMeta`; unknown keys are ignored (newer augkit versions)."""
        return meta_from_dict(d, source)


def versions() -> dict[str, str]:
    """Versions of augkit and the libraries that shape a model (read without importing them)."""
    out = {"augkit": __version__}
    for name in ("torch", "torchvision", "albumentations", "timm"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name != "timm":  # an optional extra: named only where installed
                out[name] = "not installed"
    return out


class HasStateDict(Protocol):
    """What a checkpoint takes its weights from: a model (DDP-wrapped or not), or a copy of its
    state dict with the same method (a training run's best epoch, kept until it is written)."""

    def state_dict(self) -> Mapping[str, Any]: ...


def save_checkpoint(path: str | os.PathLike, model: HasStateDict, meta: ModelMeta, **extra: Any) -> Path:
    """Atomically write ``{format, state_dict, meta, **extra}``; ``extra`` holds only tensors,
    numbers, strings, lists and dicts (optimizer state, epoch, metrics), so weights_only loads it."""
    path = Path(path)
    atomic_write_bytes(path, checkpoint_bytes(model, meta, **extra))
    return path


def checkpoint_bytes(model: HasStateDict, meta: ModelMeta, **extra: Any) -> bytes:
    """The bytes :func:`save_checkpoint` writes: a snapshot, unaffected by later training steps."""
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    payload = {"format": FORMAT, "state_dict": state, "meta": asdict(meta), **extra}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def _unwrap(model: HasStateDict) -> HasStateDict:
    return getattr(model, "module", model)  # DDP / DataParallel


# ====================================================================== loading


def load_checkpoint(path: str | os.PathLike, *, allow_plain: bool = False) -> dict:
    """Load with ``weights_only=True`` (a file that needs arbitrary unpickling is refused) and
    validate it. ``allow_plain`` also accepts a plain state dict (``--weights FILE``)."""
    path = Path(path)
    _check_file(path)
    with open(path, "rb") as fh:
        return parse_checkpoint(fh, path, allow_plain=allow_plain)


def load_checkpoint_bytes(data: bytes, source: str | os.PathLike) -> dict:
    """:func:`load_checkpoint` for a checkpoint already read (sent to a Ray actor)."""
    return parse_checkpoint(io.BytesIO(data), source)


def parse_checkpoint(fh: BinaryIO, source: str | os.PathLike, *, allow_plain: bool = False) -> dict:
    try:
        ckpt = torch.load(fh, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError, struct.error ... on junk
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"{source}: refused to load: not a safe checkpoint (weights_only) or a damaged file: {first[:200]}"
        ) from None
    if not isinstance(ckpt, dict):
        raise UsageError(f"{source}: not an augkit checkpoint or state dict (holds a {type(ckpt).__name__})")
    if ckpt.get("format") == FORMAT:
        validate_checkpoint(ckpt, source)
    elif not allow_plain:
        raise UsageError(f"{source}: not an augkit checkpoint (format {ckpt.get('format')!r}, expected {FORMAT!r})")
    return ckpt


def _check_file(path: Path) -> None:
    """A regular file: a FIFO or device would block or never end (checked without opening it)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UsageError(f"{path}: checkpoint not found") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path}: is a folder, not a checkpoint")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path}: not a regular file (a FIFO, socket or device), not a checkpoint")


def find_checkpoint(run: str | os.PathLike) -> Path:
    """A run folder means its ``best.pt`` (else ``last.pt``); a file is itself."""
    run = Path(run)
    if run.is_dir():
        for name in (BEST, LAST):
            if (run / name).exists():
                return run / name
        raise UsageError(f"{run}: no {BEST} or {LAST} in this run folder")
    if not run.exists():
        raise UsageError(f"{run}: run folder or checkpoint not found")
    return run


def load_model(run: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMeta]:
    """The trained model (eval mode, on ``device``) and its metadata, from a run folder or checkpoint."""
    path = find_checkpoint(run)
    model, meta = model_from_checkpoint(load_checkpoint(path), path)
    return model.to(device), meta


def model_from_checkpoint(ckpt: dict, source: str | os.PathLike) -> tuple[nn.Module, ModelMeta]:
    """Build the saved architecture and load its weights (CPU, eval mode); the checkpoint is
    already validated by :func:`parse_checkpoint`."""
    meta = ModelMeta.from_dict(ckpt["meta"], source)
    model = build_model(meta.arch, len(meta.classes))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else "")
        raise UsageError(
            f"{source}: the weights do not fit a {meta.arch} with {len(meta.classes)} classes: {detail[:300]}"
        ) from None
    return model.eval(), meta


# ====================================================================== validation


def validate_checkpoint(ckpt: dict, source: str | os.PathLike) -> ModelMeta:
    """Check an augkit checkpoint's ``meta`` and ``state_dict``; returns the metadata."""
    for key, kind in (("meta", "a mapping of fields"), ("state_dict", "a mapping of weight names to tensors")):
        if key not in ckpt:
            raise UsageError(f"{source}: damaged checkpoint: no {key!r} entry")
        if not isinstance(ckpt[key], dict):
            raise UsageError(f"{source}: damaged checkpoint: {key!r} is a {type(ckpt[key]).__name__}, expected {kind}")
    meta = meta_from_dict(ckpt["meta"], source)
    check_state_dict(ckpt["state_dict"], source)
    key = arch_head_name(meta.arch) + ".weight"
    head = ckpt["state_dict"].get(key)
    if head is None or head.ndim not in (2, 4):
        raise UsageError(f"{source}: damaged checkpoint: no classification head ({key}) in the state dict")
    if head.shape[0] != len(meta.classes):
        raise UsageError(
            f"{source}: the class list has {len(meta.classes)} names but the model's head has "
            f"{head.shape[0]} outputs (was the class list edited?)"
        )
    return meta


def check_state_dict(state: Any, source: str | os.PathLike) -> dict:
    """A mapping of weight names to tensors (what ``load_state_dict`` takes)."""
    if not isinstance(state, dict) or not state:
        raise UsageError(f"{source}: not a state dict (expected a mapping of weight names to tensors)")
    bad = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise UsageError(
            f"{source}: not a state dict: entry {str(bad)[:80]!r} is a {type(state[bad]).__name__}, expected a tensor"
        )
    return state


def meta_from_dict(d: Any, source: str | os.PathLike = "checkpoint", *, check_model: bool = True) -> ModelMeta:
    """Validate every field of a checkpoint's ``meta``; a :class:`UsageError` names the first problem.

    ``check_model=False`` skips checking that this augkit can build ``arch`` (an ONNX export runs
    without torchvision's or timm's model code)."""
    if not isinstance(d, dict):
        raise UsageError(f"{source}: damaged checkpoint: 'meta' is a {type(d).__name__}, expected a mapping")
    known = {f.name for f in fields(ModelMeta)}
    values = {k: v for k, v in d.items() if k in known}
    values.setdefault("decode_policy", "")
    required = [f.name for f in fields(ModelMeta) if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise UsageError(f"{source}: damaged checkpoint: meta has no {', '.join(missing)}")
    for name, check in _CHECKS.items():
        if name in values:
            problem = check(values[name])
            if problem:
                raise UsageError(f"{source}: bad checkpoint metadata: {name} {_short(values[name])}: {problem}")
    if check_model:
        check_arch(values["arch"], f"{source}: ")
    if values.get("arch_source", "") not in ("", arch_source(values["arch"])):
        raise UsageError(
            f"{source}: bad checkpoint metadata: arch_source {_short(values['arch_source'])} does "
            f"not match arch {values['arch']!r} (built by {arch_source(values['arch'])})"
        )
    problem = _class_problem(values["classes"], values["class_to_idx"])
    if problem:
        raise UsageError(f"{source}: bad checkpoint metadata: {problem}")
    return ModelMeta(**values)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _int_in(lo: int, hi: int):
    def check(v: Any) -> str:
        if not isinstance(v, int) or isinstance(v, bool):
            return f"must be an integer, not a {type(v).__name__}"
        return "" if lo <= v <= hi else f"out of range (allowed: {lo} to {hi} pixels)"

    return check


def _channels(positive: bool):
    def check(v: Any) -> str:
        if not isinstance(v, list) or len(v) != 3:
            return "must be a list of 3 numbers (one per RGB channel)"
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
            return "must hold 3 finite numbers"
        return "every value must be > 0 (it divides the pixels)" if positive and min(v) <= 0 else ""

    return check


def _of_type(kind: type, what: str):
    return lambda v: "" if isinstance(v, kind) else f"must be {what}, not a {type(v).__name__}"


def _versions(v: Any) -> str:
    ok = isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())
    return "" if ok else "must map names to version strings"


_CHECKS = {
    "arch": _of_type(str, "a string"),
    "classes": _of_type(list, "a list of class names"),
    "class_to_idx": _of_type(dict, "a mapping of class names to indices"),
    "image_size": _int_in(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
    "mean": _channels(positive=False),
    "std": _channels(positive=True),
    "decode_policy": _of_type(str, "a string"),
    "resize_policy": _of_type(str, "a string"),
    "recipe_text": _of_type(str, "a string"),
    "recipe_name": _of_type(str, "a string"),
    "versions": _versions,
    "arch_source": _of_type(str, "a string"),
}


def _class_problem(classes: list, class_to_idx: dict) -> str:
    if not classes:
        return "the class list is empty"
    bad = [c for c in classes if not isinstance(c, str) or not c]
    if bad:
        return f"class names must be non-empty strings, found {_short(bad[0])}"
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        return f"the class list names {', '.join(map(repr, dupes[:5]))} more than once"
    if class_to_idx != {c: i for i, c in enumerate(classes)}:
        return "class_to_idx does not match the class list (each class must map to its position)"
    return ""
