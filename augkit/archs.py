"""The architectures augkit trains: torchvision ResNets with a new classification head.

Kept apart from :mod:`augkit.checkpoint` (which builds a saved model through this module) and
:mod:`augkit.models` (the weights a model starts from, which reads checkpoints), so imports
point one way: models -> checkpoint -> archs.
"""
from __future__ import annotations

import torchvision
from torch import nn

from .errors import UsageError
from .params import suggest

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def check_arch(arch: object, where: str = "") -> str:
    """``arch`` if augkit knows it; else a :class:`UsageError` listing the allowed names."""
    if isinstance(arch, str) and arch in ARCHS:
        return arch
    hint = suggest(arch, ARCHS) if isinstance(arch, str) else ""
    raise UsageError(f"{where}unknown arch {arch!r}{hint} (allowed: {', '.join(ARCHS)})")


def build_model(arch: str, num_classes: int) -> nn.Module:
    """An untrained torchvision ResNet whose ``fc`` has ``num_classes`` outputs."""
    check_arch(arch)
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model
