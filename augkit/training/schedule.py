"""Learning rate per optimizer step: ``--schedule`` and ``--warmup``, as a pure function of the step.

A pure function of (epoch, step in epoch), not a ``torch.optim.lr_scheduler`` object, because
augkit's runs switch phases (``--freeze finetune``: the head alone, backbone at lr 0, then every layer
with the backbone at ``lr x`` :data:`~augkit.training.freeze.BACKBONE_LR_MULT`), resume mid-run from
``last.pt``, and run ``--lr auto`` before the peak is known: a function of the step needs no scheduler
state to save, restore or fast-forward, and gives both parameter groups their rate in one place.
The formulas are torch's own: ``tests/test_schedule.py`` checks every step against
``OneCycleLR``, ``CosineAnnealingLR``, ``MultiStepLR`` and ``LinearLR`` (for the warm-up).

The schedule spans the steps after the head-only phase of ``--freeze finetune`` (the head keeps
the constant peak rate there, as before); with ``--freeze head`` or ``none`` it spans the run. Over
that span of ``T`` steps with ``W`` warm-up steps and peak ``lr`` (step ``t`` counted from 0):

* warm-up (every schedule but ``onecycle``, which has its own): ``lr * (t + 1) / W`` for ``t < W``,
  torch's ``LinearLR(start_factor=1/W)``;
* ``constant``: ``lr``;
* ``cosine``: ``lr * (1 + cos(pi * (t - W) / (T - W))) / 2``, down to 0 (timm's per-step cosine);
* ``step``: ``lr``, x0.1 after half of the steps after warm-up, x0.01 after three quarters (the
  ResNet paper's milestones; ``MultiStepLR(gamma=0.1)``);
* ``onecycle``: torch's ``OneCycleLR`` (cosine annealing both ways, ``div_factor=25``,
  ``final_div_factor=1e4``): from ``lr/25`` up to ``lr`` over the warm-up (default
  :data:`ONECYCLE_WARMUP` of the span), then down to ``lr/25/1e4``; learning rate only, the
  momentum is not cycled;
* ``cosine-epoch``: augkit's schedule before per-step schedules: the cosine taken once per epoch,
  ``lr * (1 + cos(pi * e / E)) / 2`` for epoch ``e`` of the ``E`` in the span (the warm-up, if any,
  overrides its first steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from augkit.training.freeze import FreezePlan

SCHEDULES = ("onecycle", "cosine", "step", "constant", "cosine-epoch")
#: the share of the span that onecycle rises over when ``--warmup`` is not given (torch's pct_start)
ONECYCLE_WARMUP = 0.3
ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 25.0, 1e4  # torch OneCycleLR's div_factor and final_div_factor
STEP_MILESTONES, STEP_GAMMA = (0.5, 0.75), 0.1


def factor(schedule: str, t: int, total: int, warmup: int, steps_per_epoch: int = 1) -> float:
    """The learning rate of step ``t`` (0-based) of a ``total``-step span as a fraction of the peak.

    ``warmup`` is in steps; ``steps_per_epoch`` only matters to ``cosine-epoch``. Steps past the end
    keep the last step's value."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    total = max(1, total)
    t = min(max(0, t), total - 1)
    if schedule == "onecycle":
        return _onecycle(t, total, warmup)
    if t < warmup:
        return (t + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine-epoch":
        epochs = max(1, math.ceil(total / max(1, steps_per_epoch)))
        return 0.5 * (1 + math.cos(math.pi * (t // max(1, steps_per_epoch)) / epochs))
    span = max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (t - warmup) / span))
    passed = sum(t - warmup >= int(m * span) for m in STEP_MILESTONES)  # "step"
    return STEP_GAMMA**passed


def _onecycle(t: int, total: int, warmup: int) -> float:
    """torch.optim.lr_scheduler.OneCycleLR (anneal_strategy="cos", three_phase=False), divided by its max_lr."""
    if total < 3:  # torch needs a step in each phase
        return 1.0
    start, end = 1 / ONECYCLE_DIV, 1 / ONECYCLE_DIV / ONECYCLE_FINAL_DIV
    up = float(warmup) - 1  # torch: float(pct_start * total_steps) - 1
    if t <= up:
        return _cos(start, 1.0, t / up)
    return _cos(1.0, end, (t - up) / (total - 1 - up))


def _cos(a: float, b: float, pct: float) -> float:
    return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)


def warmup_steps(schedule: str, warmup_epochs: float | None, steps_per_epoch: int, total: int) -> int:
    """``--warmup`` (epochs, fractions allowed; None: the schedule's default) as steps within a span of ``total``.

    onecycle always rises over 1 to ``total - 1`` steps (torch needs both phases); the others warm
    up over at most ``total`` steps."""
    if schedule == "onecycle":
        w = ONECYCLE_WARMUP * total if warmup_epochs is None else warmup_epochs * steps_per_epoch
        return min(max(2, round(w)), total - 1) if total >= 3 else 1
    return min(round((warmup_epochs or 0.0) * steps_per_epoch), total)


@dataclass(frozen=True)
class StepLRs:
    """The (backbone, head) learning rates of every step of a run."""

    schedule: str
    lr: float  # the peak (head) rate
    epochs: int
    steps_per_epoch: int
    warmup: float | None  # epochs; None: the schedule's default
    plan: FreezePlan

    @property
    def start_epoch(self) -> int:
        """The first epoch of the scheduled span: after the head-only phase of ``finetune``."""
        return min(self.plan.warmup_epochs, self.epochs) if self.plan.mode == "finetune" else 0

    @property
    def total(self) -> int:
        """Steps in the scheduled span."""
        return max(1, (self.epochs - self.start_epoch) * self.steps_per_epoch)

    @property
    def warmup_steps(self) -> int:
        return warmup_steps(self.schedule, self.warmup, self.steps_per_epoch, self.total)

    def head_lr(self, epoch: int, step: int) -> float:
        """The head's rate at step ``step`` of 0-based ``epoch``."""
        if epoch < self.start_epoch:
            return self.lr
        t = (epoch - self.start_epoch) * self.steps_per_epoch + step
        return self.lr * factor(self.schedule, t, self.total, self.warmup_steps, self.steps_per_epoch)

    def at(self, epoch: int, step: int) -> tuple[float, float]:
        """(backbone, head) rates; a frozen backbone (the ``head`` phase) gets 0."""
        head = self.head_lr(epoch, step)
        return (0.0 if self.plan.phase(epoch) == "head" else head * self.plan.backbone_lr_mult), head

    def describe(self) -> str:
        """One line for settings.yaml and the start-up lines."""
        w = self.warmup_steps
        head = (
            f"head alone at a constant {self.lr:.3g} for {self.start_epoch} epoch(s), then " if self.start_epoch else ""
        )
        rise = f"rising over {w} steps" if self.schedule == "onecycle" else f"{w} warm-up steps"
        return (
            f"{head}{self.schedule} over {self.total} steps ({self.steps_per_epoch} per epoch), {rise}, "
            f"peak {self.lr:.3g}"
        )

    def to_dict(self) -> dict:
        return {
            "name": self.schedule,
            "peak_lr": self.lr,
            "warmup_epochs": self.warmup,
            "warmup_steps": self.warmup_steps,
            "span_steps": self.total,
            "steps_per_epoch": self.steps_per_epoch,
            "head_only_epochs_at_constant_lr": self.start_epoch,
            "description": self.describe(),
        }
