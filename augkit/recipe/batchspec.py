"""The ``batch:`` section of a recipe: mixup and cutmix settings, parsed and validated without torch.

Batch-level augmentation mixes pairs of images in a batch and mixes their labels in the same
proportion, so it cannot run per image in ``augment`` (which writes single files); ``train``
applies it per batch through :class:`augkit.training.mixing.BatchAugment`. This module is pure data so
that ``augkit recipes ...`` can check and show it without importing torch.

Semantics follow timm's ``Mixup``: ``p`` is the probability that a batch is mixed at all; with
both ``mixup`` and ``cutmix`` given, a mixed batch uses cutmix with probability ``switch_prob``,
else mixup; lambda is drawn from Beta(alpha, alpha).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from augkit.errors import RecipeError
from augkit.recipe.params import Param, check_value, short, suggest

BATCH_KEYS = ("mixup", "cutmix", "p", "switch_prob")
MIX_DEFAULT_ALPHA = {"mixup": 0.2, "cutmix": 1.0}
P_SPEC = Param("number", 1.0, lo=0.0, hi=1.0, help="probability that a batch is mixed at all")
SWITCH_SPEC = Param(
    "number", 0.5, lo=0.0, hi=1.0, help="with both mixup and cutmix: probability that a mixed batch uses cutmix"
)
#: alpha > 0 (Beta(0, 0) is not a distribution); above 100 lambda is 0.5 for every practical purpose.
ALPHA_SPEC = Param("number", None, lo=0.0, hi=100.0, help="Beta(alpha, alpha) concentration, > 0")


@dataclass(frozen=True)
class BatchSpec:
    """Validated batch augmentation: ``None`` alpha means that kind is off (at least one is on)."""

    mixup_alpha: float | None = None
    cutmix_alpha: float | None = None
    p: float = 1.0
    switch_prob: float = 0.5

    @property
    def kinds(self) -> tuple[str, ...]:
        """The mixing kinds this spec can draw ("mixup", "cutmix")."""
        return tuple(k for k, a in (("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha)) if a is not None)

    def to_yaml(self) -> dict:
        out: dict[str, Any] = {}
        if self.mixup_alpha is not None:
            out["mixup"] = {"alpha": self.mixup_alpha}
        if self.cutmix_alpha is not None:
            out["cutmix"] = {"alpha": self.cutmix_alpha}
        out["p"] = self.p
        if len(self.kinds) == 2:
            out["switch_prob"] = self.switch_prob
        return out


def _line(d: Any, key: Any, default: int | None) -> int | None:
    return d.line_of(key) if hasattr(d, "line_of") and d.line_of(key) is not None else default


def _parse_alpha(kind: str, raw: Any, source: str, line: int | None) -> float:
    where = f"batch.{kind}"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{kind} takes a mapping such as {{alpha: {MIX_DEFAULT_ALPHA[kind]}}}, got {short(raw)}",
            source=source,
            where=where,
            line=line,
            allowed="alpha",
        )
    for key in raw:
        if key != "alpha":
            raise RecipeError(
                f"unknown key {short(key)} in {kind}" + suggest(key, ("alpha",)),
                source=source,
                where=where,
                line=_line(raw, key, line),
                allowed="alpha",
            )
    aline = _line(raw, "alpha", line)
    alpha = check_value(
        ALPHA_SPEC, "alpha", raw.get("alpha", MIX_DEFAULT_ALPHA[kind]), where=where, source=source, line=aline
    )
    if alpha <= 0:
        raise RecipeError(
            f"alpha: {short(alpha)} must be greater than 0 (lambda ~ Beta(alpha, alpha))",
            source=source,
            where=where,
            line=aline,
            allowed="a number in (0, 100]",
        )
    return alpha


def parse_batch(raw: Any, source: str, line: int | None) -> BatchSpec:
    """The ``batch:`` section; every error names the file, line and key."""
    if not isinstance(raw, dict):
        raise RecipeError(
            f"batch must be a mapping, got {short(raw)}",
            source=source,
            where="batch",
            line=line,
            allowed=", ".join(BATCH_KEYS),
        )
    for key in raw:
        if key not in BATCH_KEYS:
            raise RecipeError(
                f"unknown key {short(key)} in batch" + suggest(key, BATCH_KEYS),
                source=source,
                where="batch",
                line=_line(raw, key, line),
                allowed=", ".join(BATCH_KEYS),
            )
    if "mixup" not in raw and "cutmix" not in raw:
        raise RecipeError(
            "batch needs mixup, cutmix or both",
            source=source,
            where="batch",
            line=line,
            allowed="mixup: {alpha: 0.2}, cutmix: {alpha: 1.0}",
        )
    alphas = {k: _parse_alpha(k, raw[k], source, _line(raw, k, line)) for k in ("mixup", "cutmix") if k in raw}
    p = check_value(P_SPEC, "p", raw.get("p", P_SPEC.default), where="batch", source=source, line=_line(raw, "p", line))
    switch = check_value(
        SWITCH_SPEC,
        "switch_prob",
        raw.get("switch_prob", SWITCH_SPEC.default),
        where="batch",
        source=source,
        line=_line(raw, "switch_prob", line),
    )
    if "switch_prob" in raw and len(alphas) < 2:
        raise RecipeError(
            "switch_prob needs both mixup and cutmix",
            source=source,
            where="batch",
            line=_line(raw, "switch_prob", line),
        )
    return BatchSpec(alphas.get("mixup"), alphas.get("cutmix"), p, switch)


def describe_batch() -> str:
    """One line for ``recipes ops``: the keys of the batch section with their defaults."""
    kinds = ", ".join(f"{k}: {{alpha: {a:g}}}" for k, a in MIX_DEFAULT_ALPHA.items())
    return (
        f"{kinds} (alpha > 0), p: {P_SPEC.help} ({P_SPEC.default:g}), switch_prob: {SWITCH_SPEC.help} "
        f"({SWITCH_SPEC.default:g})"
    )
