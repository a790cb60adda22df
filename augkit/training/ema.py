"""``--ema DECAY``: an exponential moving average of the weights, validated beside them every epoch.

The semantics of timm's ``ModelEmaV3`` with ``use_warmup=True`` and ``exclude_buffers=True``:
after optimizer step ``n`` (counted from 1) every floating-point parameter becomes
``ema = decay_n * ema + (1 - decay_n) * weight`` with the decay warmed up as
``decay_n = min(DECAY, 1 - (1 + (n - 1)) ** -power)`` (``power`` = 2/3, timm's default; ``decay_1`` = 0,
so the first update copies the weights), and the buffers (BatchNorm's running mean, variance and
batch count) are copied, not averaged: they describe the current weights' activations.
The warm-up matters to short runs: a fixed 0.999 would still hold most of the random
initialisation after a few hundred steps.

Written here rather than imported from timm because timm is an optional extra (``--arch timm/...``);
``tests/test_ema.py`` checks this class against a hand-computed average and against timm's
``ModelEmaV3`` when timm is installed.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

WARMUP_POWER = 2 / 3  # timm ModelEmaV3's warmup_power (warmup_gamma = 1)


class ModelEma:
    """A frozen copy of ``model`` that :meth:`update` moves towards the model after each optimizer step."""

    def __init__(self, model: nn.Module, decay: float, warmup_power: float = WARMUP_POWER):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be between 0 and 1, got {decay}")
        self.module = copy.deepcopy(getattr(model, "module", model))  # unwrap DDP
        self.module.eval().requires_grad_(False)
        self.decay, self.warmup_power = decay, warmup_power
        self.updates = 0

    def decay_at(self, n: int) -> float:
        """The decay of the ``n``-th update (1-based): 0 first, then warming up towards :attr:`decay`."""
        k = max(0, n - 1)
        if k <= 0:
            return 0.0
        return min(self.decay, 1 - (1 + k) ** -self.warmup_power)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average the parameters in (timm's ``lerp``), copy the buffers."""
        self.updates += 1
        weight = 1.0 - self.decay_at(self.updates)
        src = getattr(model, "module", model)
        ema_p, model_p = [], []
        for e, m in zip(self.module.parameters(), src.parameters()):
            if e.is_floating_point():
                ema_p.append(e)
                model_p.append(m.detach().to(e.dtype))
            else:
                e.copy_(m)
        if ema_p:
            torch._foreach_lerp_(ema_p, model_p, weight)
        for e, m in zip(self.module.buffers(), src.buffers()):
            e.copy_(m)

    def state_dict(self) -> dict:
        """What ``last.pt`` keeps for ``--resume``: the averaged weights and the update count."""
        return {"state_dict": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["state_dict"])
        self.updates = int(state["updates"])
