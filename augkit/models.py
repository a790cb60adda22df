"""The weights a model starts from: ImageNet through torchvision, or a file (an earlier augkit
run, or a plain torchvision state dict). The architectures themselves live in :mod:`augkit.archs`."""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from .archs import ARCHS, build_model
from .checkpoint import FORMAT, check_state_dict, find_checkpoint, load_checkpoint
from .errors import UsageError

__all__ = ["ARCHS", "build_model", "imagenet_state_dict", "load_backbone_weights", "weights_file_state_dict"]
_WEIGHTS_ENUM = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights",
                 "resnet101": "ResNet101_Weights", "resnet152": "ResNet152_Weights"}


def imagenet_state_dict(arch: str) -> dict:
    """ImageNet weights through torchvision's weights API (downloads on first use)."""
    enum = getattr(torchvision.models, _WEIGHTS_ENUM[arch]).DEFAULT
    try:
        return enum.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # URLError, socket errors, SSL errors ...
        raise UsageError(f"could not download ImageNet weights for {arch} ({type(exc).__name__}: {exc}). "
                         "Without internet, use --weights none or --weights PATH (a torchvision state dict "
                         f"file, or an earlier augkit run); torchvision caches downloads in {torch.hub.get_dir()}") from None


def load_backbone_weights(model: nn.Module, state: dict, source: str) -> list[str]:
    """Load every weight except the classification head; returns the keys that were loaded.

    Shapes must match; a different architecture is an error, not a silent partial load.
    """
    own = model.state_dict()
    body = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing = [k for k in own if not k.startswith("fc.") and k not in body]
    wrong = [k for k, v in body.items() if k in own and own[k].shape != v.shape]
    unknown = [k for k in body if k not in own]
    if missing or wrong or unknown:
        detail = "; ".join(x for x in (
            f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
            f"{len(wrong)} with other shapes (e.g. {wrong[0]})" if wrong else "",
            f"{len(unknown)} unexpected (e.g. {unknown[0]})" if unknown else "") if x)
        raise UsageError(f"{source}: weights do not fit this architecture: {detail}")
    model.load_state_dict({**own, **body})
    return list(body)


def weights_file_state_dict(path: str | Path) -> dict:
    """A state dict from a file: an augkit checkpoint/run folder (validated in full, as predict
    does) or a plain torchvision state dict (optionally under a ``state_dict`` key)."""
    path = Path(path)
    source = find_checkpoint(path) if path.is_dir() else path
    ckpt = load_checkpoint(source, allow_plain=not path.is_dir())
    if ckpt.get("format") == FORMAT:
        return ckpt["state_dict"]  # validated by load_checkpoint
    return check_state_dict(ckpt["state_dict"] if "state_dict" in ckpt else ckpt, source)
