"""The transfer-learning policy: which part of the network trains, and when.

``--freeze auto`` was chosen by measurement (``benchmarks/bench_transfer.py``; the table is in
docs/training.md and benchmarks/README.md): training the head first and then every layer beat a
frozen backbone at every data size measured, so with pretrained weights ``auto`` fine-tunes: the
head alone for :data:`WARMUP_FRACTION` of the epochs, rounded, at least one when the run has two
epochs or more (so a random head does not send large gradients into good features), then
everything, the backbone at :data:`BACKBONE_LR_MULT` x lr (the usual choice for ImageNet features).
A one-epoch run has no head-only epoch: it trains all layers from the start, and the plan says so.
``--freeze head`` keeps the frozen backbone (BatchNorm statistics included) for those who want it.
Without pretrained weights (``--weights none``) there is nothing to keep, so ``auto`` trains
everything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the CLI reads this module's constants without importing torch
    from torch import nn

FREEZE_CHOICES = ("auto", "head", "finetune", "none")
#: test accuracy (mean of 2 seeds) per images per class: head only / head then all / all layers
EVIDENCE = {5: (0.390, 0.660, 0.682), 10: (0.575, 0.815, 0.810), 30: (0.710, 0.942, 0.927), 100: (0.832, 0.980, 0.980)}
BACKBONE_LR_MULT = 0.1  # backbone learning rate = lr x this, once unfrozen (pretrained weights only)
WARMUP_FRACTION = 0.2  # share of the epochs that train the head alone before fine-tuning


@dataclass
class FreezePlan:
    """``mode``: ``head`` (backbone frozen throughout), ``finetune`` (head alone for
    ``warmup_epochs``, then everything) or ``none`` (everything from the first epoch)."""

    mode: str
    reason: str
    warmup_epochs: int = 0
    backbone_lr_mult: float = 1.0

    def phase(self, epoch: int) -> str:
        """``head`` (backbone frozen, BatchNorm in eval mode) or ``all`` for a 0-based epoch."""
        return "head" if self.mode == "head" or epoch < self.warmup_epochs else "all"

    def describe(self) -> str:
        if self.mode == "head":
            return "head only (backbone and BatchNorm statistics frozen)"
        if self.mode == "finetune" and self.warmup_epochs == 0:
            return (
                f"fine-tune: all layers from the first epoch, a one-epoch run having no head-only epoch "
                f"(backbone lr x{self.backbone_lr_mult:g})"
            )
        if self.mode == "finetune":
            return (
                f"fine-tune: head alone for {self.warmup_epochs} epoch(s), then all layers "
                f"(backbone lr x{self.backbone_lr_mult:g})"
            )
        return "train all layers" + (f" (backbone lr x{self.backbone_lr_mult:g})" if self.backbone_lr_mult != 1 else "")

    def to_dict(self) -> dict:
        return asdict(self)


def choose_freeze(freeze: str, n_train: int, n_classes: int, epochs: int, pretrained: bool) -> FreezePlan:
    """Resolve ``--freeze`` into a plan, with the reason printed to the user."""
    if freeze not in FREEZE_CHOICES:
        raise ValueError(f"freeze {freeze!r} is not one of {FREEZE_CHOICES}")
    mult = BACKBONE_LR_MULT if pretrained else 1.0
    if freeze == "head":
        why = "--freeze head"
        if not pretrained:
            why += " (warning: the backbone is random, not pretrained: expect low accuracy)"
        return FreezePlan("head", why)
    if freeze == "none":
        return FreezePlan("none", "--freeze none", 0, mult)
    if freeze == "finetune":
        return FreezePlan("finetune", "--freeze finetune", _warmup(epochs), mult)
    if not pretrained:
        return FreezePlan("none", "auto: no pretrained weights (--weights none), so the whole network must learn")
    per_class = n_train / max(1, n_classes)
    head, then_all, _ = EVIDENCE[10]
    return FreezePlan(
        "finetune",
        f"auto ({n_train} training images, {per_class:.0f} per class): fine-tune; head "
        f"then all layers beat a frozen backbone at every size measured, 5 to 100 images "
        f"per class (10 per class: {then_all:.0%} vs {head:.0%}; benchmarks/"
        "bench_transfer.py)",
        _warmup(epochs),
        mult,
    )


def _warmup(epochs: int) -> int:
    """Head-only epochs before the whole network trains: 20% of the epochs, rounded, at least one
    when there are two epochs or more; none in a one-epoch run (which then trains all layers)."""
    return max(1, round(WARMUP_FRACTION * epochs)) if epochs >= 2 else 0


def head_prefix(model: nn.Module) -> str:
    """The classification head's module name (``fc``, ``classifier.1``, ``heads.head``, ...), whatever the family."""
    from augkit.models.archs import (
        head_name,  # deferred: archs imports torchvision; the CLI reads this module without torch
    )

    return head_name(model)


def is_head(name: str, head: str = "fc") -> bool:
    """Whether parameter ``name`` belongs to the head module ``head`` (see :func:`head_prefix`)."""
    return name.startswith(head + ".")


def split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone parameters, head parameters): the backbone is everything but the new head."""
    head_name = head_prefix(model)
    backbone: list[nn.Parameter] = []
    head: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (head if is_head(name, head_name) else backbone).append(p)
    return backbone, head


def set_phase(model: nn.Module, phase: str) -> None:
    """Freeze (``head``) or unfreeze (``all``) the backbone; call before each epoch."""
    head_name = head_prefix(model)
    for name, p in model.named_parameters():
        p.requires_grad_(phase == "all" or is_head(name, head_name))


def train_mode(model: nn.Module, phase: str) -> None:
    """Training mode for the phase. With a frozen backbone the model is in eval mode, so BatchNorm
    uses and keeps its running statistics and stochastic depth is off; only the top-level block
    holding the head (``classifier`` of EfficientNet/MobileNet, timm's ``head``) trains, so the
    dropout in front of a new head still regularises it (as Keras' transfer-learning guide does),
    BatchNorm inside it excepted."""
    if phase == "all":
        model.train()
        return
    model.eval()
    inner = getattr(model, "module", model)  # DDP / DataParallel
    block = inner.get_submodule(head_prefix(inner).split(".")[0])
    block.train()
    for m in block.modules():
        if "BatchNorm" in type(m).__name__:  # by name: timm's BatchNormAct2d too
            m.eval()
