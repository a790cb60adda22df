"""Checkpoints: safe to load (``torch.load(weights_only=True)``), written atomically, and
carrying everything prediction needs (classes, image size, normalization, decode policy,
the recipe text, versions)."""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UsageError
from .images import atomic_write_bytes

FORMAT = "augkit-checkpoint-v1"
BEST, LAST = "best.pt", "last.pt"


@dataclass
class ModelMeta:
    arch: str
    classes: list[str]
    class_to_idx: dict[str, int]
    image_size: int
    mean: list[float]
    std: list[float]
    decode_policy: str
    resize_policy: str
    recipe_text: str = ""
    recipe_name: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelMeta":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def versions() -> dict[str, str]:
    import albumentations
    import torchvision

    from . import __version__
    return {"augkit": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "albumentations": albumentations.__version__}


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: ModelMeta, **extra: Any) -> Path:
    """Atomically write ``{format, state_dict, meta, **extra}``; ``extra`` holds only tensors,
    numbers, strings, lists and dicts (optimizer state, epoch, metrics), so weights_only loads it."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    payload = {"format": FORMAT, "state_dict": state, "meta": asdict(meta), **extra}
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP / DataParallel


def load_checkpoint(path: str | os.PathLike, *, allow_plain: bool = False) -> dict:
    """Load with ``weights_only=True``: a file that needs arbitrary unpickling is refused."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path}: refused to load: not a safe checkpoint (weights_only) or a damaged file: "
                         f"{first}") from None
    if not isinstance(ckpt, dict):
        raise UsageError(f"{path}: not an augkit checkpoint or state dict")
    if ckpt.get("format") != FORMAT and not allow_plain:
        raise UsageError(f"{path}: not an augkit checkpoint (format {ckpt.get('format')!r}, expected {FORMAT!r})")
    return ckpt


def find_checkpoint(run: str | os.PathLike) -> Path:
    """A run folder means its ``best.pt`` (else ``last.pt``); a file is itself."""
    run = Path(run)
    if run.is_dir():
        for name in (BEST, LAST):
            if (run / name).is_file():
                return run / name
        raise UsageError(f"{run}: no {BEST} or {LAST} in this run folder")
    if not run.exists():
        raise UsageError(f"{run}: run folder or checkpoint not found")
    return run


def load_model(run: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMeta]:
    """The trained model (eval mode, on ``device``) and its metadata, from a run folder or checkpoint."""
    from .models import build_model

    path = find_checkpoint(run)
    ckpt = load_checkpoint(path)
    meta = ModelMeta.from_dict(ckpt["meta"])
    model = build_model(meta.arch, len(meta.classes))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), meta
