"""Augmentation policies as recipe ops: ``trivial_augment`` (TrivialAugment Wide) and ``rand_augment``.

Registered in augkit's op registry like any other step (:mod:`augkit.recipe.api` imports this module).
The op tables and pixel kernels are in :mod:`augkit.recipe.policies.functional` (torchvision's lists and ranges,
no torch); the albumentations transform that draws from the pipeline's generator is in
:mod:`augkit.recipe.policies.transform`, loaded only when a pipeline is built.
"""

from __future__ import annotations

from typing import Any

from augkit.recipe.ops import register_op
from augkit.recipe.params import Param
from augkit.recipe.policies.functional import NUM_BINS, OP_NAMES, V2_SUMMARY, augmentation_space

# ====================================================================== registration


def _build(policy: str, num_ops: int, magnitude_bin: int | None, prm: dict, p: float, border: int, fill: Any):
    from augkit.recipe.policies.transform import PolicyAugment  # albumentations loads when a transform is built

    return PolicyAugment(
        policy=policy,
        num_ops=num_ops,
        magnitude_bin=magnitude_bin,
        only=tuple(prm.get("only", ())),
        sign=int(prm.get("sign", 0)),
        border_mode=border,
        fill=fill,
        p=p,
    )


def _extremes(policy: str, prm: dict) -> list[tuple[str, dict]]:
    """Each listed op at the ends of what it can draw: -max and +max for signed ops, the first and last
    bin for Posterize and Solarize (RandAugment: its one bin m), once for ops without a magnitude."""
    space = augmentation_space(policy, 1, 1)
    fixed = prm.get("m")
    out = []
    for name, (values, signed) in space.items():
        if values is None:
            out.append((f"{policy} {name}", {**prm, "only": [name], "bin": 0}))
        elif signed:
            b = len(values) - 1 if fixed is None else fixed
            unit = " x side" if policy == "rand_augment" and name.startswith("Translate") else ""
            out += [
                (f"{policy} {name} {s * values[b].item():+.3g}{unit}", {**prm, "only": [name], "bin": b, "sign": s})
                for s in (-1, 1)
            ]
        else:
            ends = (0, len(values) - 1) if fixed is None else (fixed,)
            out += [(f"{policy} {name} {values[b].item():g}", {**prm, "only": [name], "bin": b}) for b in ends]
    return out


_LIST = ", ".join(OP_NAMES)
#: torchvision's fill for the policies' warps: constant 0, whatever border the recipe gives its other steps
POLICY_BORDER = ("constant", 0)
_BORDER_DOC = "Border: constant 0 (torchvision's) unless the step sets border/fill; the recipe's border is not used. "


@register_op(
    "trivial_augment",
    geometric=True,
    params={},
    example={"p": 1.0},
    doc=f"TrivialAugment Wide (torchvision's TrivialAugmentWide): one op drawn uniformly from {_LIST}, "
    "at a magnitude drawn uniformly from 31 bins (shear 0-0.99, translate 0-32 px, rotate 0-135 degrees, "
    "brightness/color/contrast/sharpness factor 1 +- 0-0.99, posterize 8-2 bits, solarize 255-0), "
    "sign flipped with probability 1/2. " + _BORDER_DOC + V2_SUMMARY,
    extremes=lambda prm: _extremes("trivial_augment", prm),
    own_border=POLICY_BORDER,
)
def _trivial_augment(prm, p, border, fill):
    return _build("trivial_augment", 1, prm.get("bin"), prm, p, border, fill)


@register_op(
    "rand_augment",
    geometric=True,
    example={"n": 2, "m": 9, "p": 1.0},
    params={
        "n": Param("int", 2, lo=1, hi=10, help="ops applied in turn, each drawn uniformly"),
        "m": Param("int", 9, lo=0, hi=NUM_BINS - 1, help="magnitude bin of every op (of 31)"),
    },
    doc=f"RandAugment (torchvision's RandAugment, 31 magnitude bins): n ops drawn uniformly from {_LIST}, "
    "each at magnitude bin m (at m=30: shear 0.3, translate 0.45 x side, rotate 30 degrees, factor "
    "1 +- 0.9, posterize 4 bits, solarize 0), sign flipped with probability 1/2. " + _BORDER_DOC + V2_SUMMARY,
    extremes=lambda prm: _extremes("rand_augment", prm),
    own_border=POLICY_BORDER,
)
def _rand_augment(prm, p, border, fill):
    return _build("rand_augment", 1 if "only" in prm else prm["n"], prm.get("bin", prm["m"]), prm, p, border, fill)
