"""``--lr auto``: a learning-rate range test before training (fastai's ``lr_find``).

The sweep trains for :func:`sweep_steps` optimizer steps on the training data, the learning rate
growing exponentially from :data:`START_LR` to :data:`END_LR`, and records each step's loss. It
stops early when the loss diverges (not finite, or the smoothed loss above :data:`DIVERGE` times
its lowest value so far, fastai's test). The losses are smoothed by a debiased exponential moving
average, and the rate is chosen by :data:`RULE`: fastai's ``minimum`` suggestion, a tenth of the
rate at which the smoothed loss is lowest (leaving out the first tenth and the last twentieth of
the sweep, as fastai does with its 100 steps): an order of magnitude before the loss bottoms out, where larger steps still
lower it. fastai's newer default, ``valley`` (:func:`valley`, the middle of the longest falling
stretch), was tried first and chose on the flat start of our short sweeps (1.6e-4 on digits, 3.8e-5
on faces, where the loss only starts to fall near 1e-4 and bottoms out near 1e-2), so it is kept
for reference only.

Everything the sweep changes is put back afterwards (:func:`preserved`): the weights and buffers,
the optimizer's state, the ``requires_grad`` flags and train/eval modes, and the torch (CPU and
CUDA), NumPy and Python random states. The data order and augmentations of the sweep come from the
run's seed alone, so the same seed chooses the same rate.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

START_LR, END_LR = 1e-6, 1.0  # AdamW diverges well before 1 on every model tried; fastai sweeps 1e-7 to 10
MAX_STEPS, MIN_STEPS = 100, 20  # fastai's num_it is 100
FRACTION = 0.1  # at most this share of the run's optimizer steps (but never fewer than MIN_STEPS)
DIVERGE = 4.0  # stop when the smoothed loss exceeds this times its minimum (fastai's stop_div)
RULE = "minimum/10 (fastai's lr_min/10): a tenth of the learning rate at which the smoothed loss is lowest"


def sweep_steps(run_steps: int) -> int:
    """Steps of the sweep for a run of ``run_steps`` optimizer steps: :data:`FRACTION` of them,
    between :data:`MIN_STEPS` and :data:`MAX_STEPS`."""
    return int(min(MAX_STEPS, max(MIN_STEPS, round(FRACTION * run_steps))))


def sweep_lrs(n: int, start: float = START_LR, end: float = END_LR) -> list[float]:
    """``n`` learning rates growing exponentially from ``start`` to ``end`` (both included)."""
    if n < 2:
        return [start]
    return [start * (end / start) ** (i / (n - 1)) for i in range(n)]


def smoothing(n: int) -> float:
    """The moving average's beta for an ``n``-step sweep: an effective window of about n/5 steps
    (fastai's 0.98 is made for 100 steps or more), between 0.8 and 0.98."""
    return max(0.8, min(0.98, 1 - 5 / max(1, n)))


def smooth(losses: list[float], beta: float) -> list[float]:
    """Debiased exponential moving average (fastai's ``SmoothenValue``)."""
    out, avg = [], 0.0
    for i, v in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


def valley(losses: list[float]) -> tuple[int, int, int]:
    """fastai's ``valley``: (chosen index, valley start, valley end) of ``losses`` (already smoothed).

    The valley is the longest decreasing subsequence's span; the choice is halfway into it
    (fastai: ``start + int(len/3) + int(len/3/2)``)."""
    n = len(losses)
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2), max_start, max_end


@dataclass
class LRFindResult:
    """The sweep and its choice (saved in settings.yaml and last.pt, drawn in lr_find.png)."""

    lr: float
    index: int  # the step of the sweep nearest to the chosen rate (where the plot marks it)
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    minimum: int  # the step with the lowest smoothed loss (in the part of the sweep the rule reads)
    steps: int  # steps run (fewer than planned when the loss diverged)
    planned: int
    stopped: str  # "end of sweep" or why it stopped early
    seconds: float
    rule: str = RULE

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"lr auto: {self.lr:.3g} from a {self.steps}-step range test ({self.stopped}, {self.seconds:.1f} s); "
            f"rule: {self.rule} (lowest at {self.lrs[self.minimum]:.3g})"
        )


def choose(lrs: list[float], losses: list[float], planned: int) -> tuple[float, int, list[float], int]:
    """(chosen rate, index of the sweep step nearest to it, smoothed losses, index of the minimum) by
    :data:`RULE`, reading the smoothed losses without the first tenth and the last twentieth of the
    planned steps (fastai's ``[num_it//10:-5]`` for its 100 steps; a fixed 5 would drop a quarter
    of a 20-step sweep, minimum included; all of them when that leaves fewer than 3)."""
    smoothed = smooth(losses, smoothing(planned))
    lo, hi = planned // 10, len(smoothed) - math.ceil(planned / 20)
    if hi - lo < 3:
        lo, hi = 0, len(smoothed)
    low = min(range(lo, hi), key=lambda i: smoothed[i])
    lr = lrs[low] / 10
    near = min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i] / lr)))
    return lr, near, smoothed, low


def range_test(
    step: Callable[[float], float], n_steps: int, start: float = START_LR, end: float = END_LR
) -> LRFindResult:
    """Call ``step(lr)`` (one optimizer step at ``lr``; returns its loss) for each rate of the sweep
    until the loss diverges; the choice by :data:`RULE`. Run it inside :func:`preserved`."""
    t0 = time.perf_counter()
    lrs, losses = sweep_lrs(n_steps, start, end), []
    beta, avg, best, stopped = smoothing(n_steps), 0.0, math.inf, "end of sweep"
    for i, lr in enumerate(lrs, 1):
        loss = float(step(lr))
        if not math.isfinite(loss):
            stopped = f"loss not finite at lr {lr:.3g}"
            break
        losses.append(loss)
        avg = beta * avg + (1 - beta) * loss
        smoothed = avg / (1 - beta**i)
        best = min(best, smoothed)
        if i > 1 and smoothed > DIVERGE * best:
            stopped = f"loss diverged at lr {lr:.3g}"
            break
    if not losses:
        raise RuntimeError(f"learning-rate range test: the first step's loss was not finite ({stopped})")
    lrs = lrs[: len(losses)]
    lr, near, smoothed_all, low = choose(lrs, losses, n_steps)
    return LRFindResult(
        lr, near, lrs, losses, smoothed_all, low, len(losses), n_steps, stopped, time.perf_counter() - t0
    )


def rng_state() -> dict:
    """Torch (CPU and every CUDA device), NumPy and Python random states."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


@contextlib.contextmanager
def preserved(model: nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Put back, on leaving, what a range test changes: weights and buffers, optimizer state and
    learning rates, ``requires_grad`` flags, train/eval modes and the random states."""
    weights = copy.deepcopy(model.state_dict())
    opt = copy.deepcopy(optimizer.state_dict())
    grads = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    rng = rng_state()
    try:
        yield
    finally:
        model.load_state_dict(weights)
        optimizer.load_state_dict(opt)
        optimizer.zero_grad(set_to_none=True)
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
        for m, t in zip(model.modules(), modes):
            m.training = t
        set_rng_state(rng)
