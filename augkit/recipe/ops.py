"""The op registry: augkit's named augmentation steps and how each becomes an albumentations transform.

Every op is registered with :func:`register_op` (a decorator over a dict), so the CLI's
``recipes ops`` listing, the validator and the tests all read the same table. albumentations
is used only from here and from :mod:`augkit.recipe.api`, so it can be swapped, and only through
:func:`augkit.albu.import_albumentations`, when a transform is built (reading the table is cheap).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from augkit.albu import import_albumentations
from augkit.errors import RecipeError
from augkit.recipe.params import Param, check_params, check_value, is_number, short, suggest
from augkit.recipe.passthrough import albumentations_transforms, build_albumentations
from augkit.recipe.yamlio import plain

# OpenCV's border constants (cv2.BORDER_*), spelled as numbers so that reading the op table
# (``recipes ops``, ``--help``) does not import OpenCV; a test checks them against cv2.
BORDER_MODES = {
    "reflect": 4,  # cv2.BORDER_REFLECT_101: mirror without repeating the edge pixel, no seams
    "replicate": 1,  # cv2.BORDER_REPLICATE
    "constant": 0,  # cv2.BORDER_CONSTANT
    "wrap": 3,  # cv2.BORDER_WRAP
}
DEFAULT_BORDER = "reflect"
GEOMETRY_PARAMS = {
    "border": Param(
        "choice",
        None,
        choices=tuple(BORDER_MODES),
        help="how pixels outside the image are filled; default: the recipe's border",
    ),
    "fill": Param("fill", None, help="fill value for border: constant; default: the recipe's fill"),
}


@dataclass(frozen=True)
class StepContext:
    """Where a step is, for error messages, and how to parse nested steps (what composites need)."""

    where: str
    source: str | None
    line: int | None
    p: float = 1.0
    parse_steps: Callable[[Any, str, str | None, int | None], list] | None = None


@dataclass
class OpSpec:
    """One registered step type.

    A leaf op is ``build(params, p, border_mode, fill)`` over a parameter schema. Hooks let an
    entry do more, so that composites and the albumentations pass-through live in this same table:
    ``parse(body, ctx) -> (params, children)`` replaces schema validation; ``build_step(step, kids)``
    replaces ``build`` (it gets the whole step and its children's transforms); ``extremes(params)``
    lists the leaf's variants for previews; ``manifest(sampled)`` renames sampled parameters for
    manifests; ``listing`` is the parameters column of ``recipes ops`` when there is no schema.
    """

    name: str
    params: dict[str, Param]
    build: Callable[..., Any] | None
    doc: str
    geometric: bool = False
    example: dict = field(default_factory=dict)
    composite: bool = False
    parse: Callable[[dict, StepContext], tuple[dict, list]] | None = None
    build_step: Callable[[Any, list], Any] | None = None
    extremes: Callable[[dict], list[tuple[str, dict]]] | None = None
    manifest: Callable[[dict], dict] | None = None
    listing: str = ""
    #: (border, fill) a geometric op uses when its step sets none, instead of the recipe's (the
    #: policies: torchvision's constant fill 0, whatever border the recipe chose for its other steps)
    own_border: tuple[str, Any] | None = None

    def all_params(self) -> dict[str, Param]:
        return {**self.params, **(GEOMETRY_PARAMS if self.geometric else {})}

    def parse_body(self, body: dict, ctx: StepContext) -> tuple[dict, list]:
        """Validated parameters (defaults filled) and child steps of one step of this op."""
        if self.parse is not None:
            return self.parse(body, ctx)
        return check_params(
            body, self.all_params(), what=f"op {self.name!r}", where=ctx.where, source=ctx.source, line=ctx.line
        ), []

    def extreme_params(self, params: dict) -> list[tuple[str, dict]]:
        """This leaf at the low and the high end of each of its ranges (or once, if it has none)."""
        if self.extremes is not None:
            return self.extremes(params)
        ranges = [k for k, s in self.params.items() if s.kind == "range" and params[k][0] != params[k][1]]
        if not ranges:
            return [(self.name, params)]
        out = []
        for end, label in ((0, "low"), (1, "high")):
            prm = copy.deepcopy(params)
            for k in ranges:
                prm[k] = [prm[k][end], prm[k][end]]
            desc = ", ".join(f"{k}={prm[k][0]:g}" for k in ranges)
            out.append((f"{self.name} {label}: {desc}", prm))
        return out


OPS: dict[str, OpSpec] = {}


def register_op(
    name: str,
    *,
    params: dict[str, Param],
    doc: str,
    geometric: bool = False,
    example: dict | None = None,
    whole_step: bool = False,
    **hooks: Any,
):
    """Decorator: register ``build(params, p, border_mode, fill) -> albumentations transform``.

    With ``whole_step=True`` the decorated function is ``build_step(step, kids)`` instead. ``hooks``
    are the optional :class:`OpSpec` fields (``composite``, ``parse``, ``extremes``, ``manifest``,
    ``listing``).
    """

    def deco(fn):
        if name in OPS:
            raise ValueError(f"op {name!r} registered twice")
        build, step_fn = (None, fn) if whole_step else (fn, None)
        OPS[name] = OpSpec(name, params, build, doc, geometric, example or {}, build_step=step_fn, **hooks)
        return fn

    return deco


def list_ops() -> list[str]:
    """Ops that apply one transform (composites are listed by :func:`list_composites`)."""
    return sorted(n for n, s in OPS.items() if not s.composite)


def list_composites() -> list[str]:
    """Ops that combine other steps (``one_of``, ``some_of``, ``sequence``), in registration order."""
    return [n for n, s in OPS.items() if s.composite]


def step_names() -> list[str]:
    """Every name a step may have, as listed to users: the schema ops sorted, then the others."""
    plain = sorted(n for n, s in OPS.items() if s.parse is None)
    return plain + [n for n, s in OPS.items() if s.parse is not None]


def is_op(name: str) -> bool:
    return name in OPS


def get_op(name: str) -> OpSpec:
    if name not in OPS:
        raise KeyError(f"unknown op {name!r}" + suggest(name, list(OPS)))
    return OPS[name]


def _t(pair) -> tuple[float, float]:
    return (float(pair[0]), float(pair[1]))


# ------------------------------------------------------------------ the classic six


@register_op(
    "flip",
    doc="Mirror the image. horizontal: left-right; vertical: up-down; "
    "both: left-right and up-down, each independently with probability 0.5.",
    params={"direction": Param("choice", "horizontal", choices=("horizontal", "vertical", "both"))},
    example={"direction": "horizontal", "p": 0.5},
    extremes=lambda prm: (
        [(f"flip {d}", {"direction": d}) for d in ("horizontal", "vertical")]
        if prm["direction"] == "both"
        else [(f"flip {prm['direction']}", prm)]
    ),
)
def _flip(prm, p, border, fill):
    A = import_albumentations()
    if prm["direction"] == "horizontal":
        return A.HorizontalFlip(p=p)
    if prm["direction"] == "vertical":
        return A.VerticalFlip(p=p)
    return A.Sequential([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)], p=p)


@register_op(
    "shift",
    geometric=True,
    doc="Translate by a fraction of the width (x) and height (y), sampled uniformly.",
    params={
        "x": Param("range", [-0.1, 0.1], lo=-1, hi=1, help="fraction of width"),
        "y": Param("range", [-0.1, 0.1], lo=-1, hi=1, help="fraction of height"),
    },
    example={"x": 0.1, "y": 0.1, "p": 0.5},
)
def _shift(prm, p, border, fill):
    A = import_albumentations()
    return A.Affine(translate_percent={"x": _t(prm["x"]), "y": _t(prm["y"])}, border_mode=border, fill=fill, p=p)


@register_op(
    "rotate",
    geometric=True,
    doc="Rotate by an angle in degrees, sampled uniformly.",
    params={"degrees": Param("range", [-15.0, 15.0], lo=-360, hi=360)},
    example={"degrees": 15, "p": 0.5},
)
def _rotate(prm, p, border, fill):
    A = import_albumentations()
    return A.Rotate(limit=_t(prm["degrees"]), border_mode=border, fill=fill, p=p)


@register_op(
    "affine",
    geometric=True,
    doc="Scale, shear (degrees), translate (fractions) and rotate (degrees) in one warp.",
    params={
        "scale": Param("range", [1.0, 1.0], lo=0.01, hi=10, scalar="around1"),
        "shear": Param("range", [0.0, 0.0], lo=-89, hi=89),
        "translate": Param("range", [0.0, 0.0], lo=-1, hi=1),
        "rotate": Param("range", [0.0, 0.0], lo=-360, hi=360),
    },
    example={"scale": [0.9, 1.1], "shear": 10, "translate": 0.05, "rotate": 10, "p": 0.5},
)
def _affine(prm, p, border, fill):
    A = import_albumentations()
    tr = _t(prm["translate"])
    return A.Affine(
        scale=_t(prm["scale"]),
        keep_ratio=True,
        shear=_t(prm["shear"]),
        translate_percent={"x": tr, "y": tr},
        rotate=_t(prm["rotate"]),
        border_mode=border,
        fill=fill,
        p=p,
    )


@register_op(
    "color",
    doc="Jitter brightness, contrast and saturation by factors (x means [1-x, 1+x]) "
    "and hue by a fraction of the color wheel (x means [-x, x]), as torchvision's ColorJitter: "
    "a parameter left out is not changed.",
    params={
        "brightness": Param("range", [1.0, 1.0], lo=0, hi=10, scalar="around1"),
        "contrast": Param("range", [1.0, 1.0], lo=0, hi=10, scalar="around1"),
        "saturation": Param("range", [1.0, 1.0], lo=0, hi=10, scalar="around1"),
        "hue": Param("range", [0.0, 0.0], lo=-0.5, hi=0.5),
    },
    example={"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02, "p": 0.8},
)
def _color(prm, p, border, fill):
    from augkit.recipe.colour import ColorJitter  # albumentations' ColorJitter in fewer uint8 passes; loads it

    return ColorJitter(
        brightness=_t(prm["brightness"]),
        contrast=_t(prm["contrast"]),
        saturation=_t(prm["saturation"]),
        hue=_t(prm["hue"]),
        p=p,
    )


@register_op(
    "linear",
    doc="out = image * a + b, with a and b sampled uniformly from their ranges, "
    "clipped to [0, 255] and truncated to uint8 (b is in pixel levels).",
    params={
        "a": Param("range", [0.8, 1.2], lo=0, hi=10, scalar="fixed"),
        "b": Param("range", [-20.0, 20.0], lo=-255, hi=255, scalar="fixed"),
    },
    example={"a": [0.8, 1.2], "b": [-20, 20], "p": 0.5},
    manifest=lambda sampled: {"a": sampled.get("alpha"), "b": sampled.get("beta")},
)
def _linear(prm, p, border, fill):
    # RandomBrightnessContrast with brightness_by_max computes clip(img * alpha + beta * 255)
    # with alpha = 1 + U(contrast_limit) and beta = U(brightness_limit): exactly a * x + b.
    from augkit.recipe.colour import RandomBrightnessContrast  # as albumentations', one table pass on uint8

    a, b = _t(prm["a"]), _t(prm["b"])
    return RandomBrightnessContrast(
        brightness_limit=(b[0] / 255.0, b[1] / 255.0),
        contrast_limit=(a[0] - 1.0, a[1] - 1.0),
        brightness_by_max=True,
        ensure_safe_range=False,
        p=p,
    )


# ------------------------------------------------------------------ composites: steps of steps


def _parse_children(body: dict, ctx: StepContext, op: str, allowed: tuple[str, ...]) -> list:
    for key in body:
        if key not in allowed:
            raise RecipeError(
                f"unknown key {short(key)} for {op}" + suggest(key, allowed),
                source=ctx.source,
                where=ctx.where,
                line=body.line_of(key) if hasattr(body, "line_of") else ctx.line,
                allowed=", ".join(allowed + ("p",)),
            )
    if "steps" not in body:
        raise RecipeError(f"{op} needs steps: [...]", source=ctx.source, where=ctx.where, line=ctx.line)
    assert ctx.parse_steps is not None, "composites are parsed by augkit.recipe.api.parse_step"
    children = ctx.parse_steps(
        body["steps"], f"{ctx.where}.steps", ctx.source, body.line_of("steps") if hasattr(body, "line_of") else ctx.line
    )
    if not children:
        raise RecipeError(f"{op} needs at least one step", source=ctx.source, where=ctx.where, line=ctx.line)
    return children


def _parse_one_of(body: dict, ctx: StepContext) -> tuple[dict, list]:
    children = _parse_children(body, ctx, "one_of", ("steps", "weights"))
    w = body.get("weights")
    if w is not None:
        if (
            not isinstance(w, list)
            or len(w) != len(children)
            or not all(is_number(x) and x >= 0 for x in w)
            or sum(w) <= 0
        ):
            raise RecipeError(
                f"weights {short(w)} must be {len(children)} numbers >= 0 with a positive sum (one per step)",
                source=ctx.source,
                where=ctx.where,
                line=ctx.line,
            )
        w = [float(x) for x in w]
    return {"weights": w}, children


def _parse_some_of(body: dict, ctx: StepContext) -> tuple[dict, list]:
    children = _parse_children(body, ctx, "some_of", ("steps", "n", "replace"))
    replace = check_value(
        Param("bool", False), "replace", body.get("replace", False), where=ctx.where, source=ctx.source, line=ctx.line
    )
    n_spec = Param("int", 1, lo=1, hi=None if replace else len(children))
    n = check_value(n_spec, "n", body.get("n", 1), where=ctx.where, source=ctx.source, line=ctx.line)
    return {"n": n, "replace": replace}, children


def _parse_sequence(body: dict, ctx: StepContext) -> tuple[dict, list]:
    return {}, _parse_children(body, ctx, "sequence", ("steps",))


_CHILDREN = [{"flip": {"direction": "horizontal"}}, {"rotate": {"degrees": [-30, 30]}}]


@register_op(
    "one_of",
    params={},
    whole_step=True,
    doc="apply one step, chosen by weight",
    composite=True,
    parse=_parse_one_of,
    listing="steps, weights",
    example={"weights": [1, 3], "steps": _CHILDREN, "p": 1.0},
)
def _one_of(step, kids):
    A = import_albumentations()
    weights = step.params.get("weights") or [1.0] * len(kids)
    total = float(sum(weights))
    # OneOf picks a child by its p; wrapping each child keeps the child's own p meaningful.
    return A.OneOf([A.Sequential([k], p=w / total) for k, w in zip(kids, weights)], p=step.p)


@register_op(
    "some_of",
    params={},
    whole_step=True,
    doc="apply n steps chosen uniformly (each with its own p)",
    composite=True,
    parse=_parse_some_of,
    listing="steps, n, replace",
    example={"n": 1, "steps": _CHILDREN, "p": 1.0},
)
def _some_of(step, kids):
    return import_albumentations().SomeOf(kids, n=step.params["n"], replace=step.params["replace"], p=step.p)


@register_op(
    "sequence",
    params={},
    whole_step=True,
    doc="apply steps in order",
    composite=True,
    parse=_parse_sequence,
    listing="steps",
    example={"steps": _CHILDREN, "p": 1.0},
)
def _sequence(step, kids):
    return import_albumentations().Sequential(kids, p=step.p)


# ------------------------------------------------------------------ any albumentations transform

ALBU_OP = "albumentations"


def _parse_albumentations(body: dict, ctx: StepContext) -> tuple[dict, list]:
    name = body.get("transform")
    if not isinstance(name, str):
        raise RecipeError(
            "albumentations step needs transform: <ClassName>", source=ctx.source, where=ctx.where, line=ctx.line
        )
    rest = copy.copy(body)  # keeps the key lines of a LineDict, for messages
    del rest["transform"]
    build_albumentations(name, rest, ctx.p, where=ctx.where, source=ctx.source, line=ctx.line)  # validate now
    return {"transform": name, **{k: plain(v) for k, v in rest.items()}}, []


@register_op(
    ALBU_OP,
    params={},
    doc="any albumentations 2.0.8 image transform, validated strictly",
    whole_step=True,
    parse=_parse_albumentations,
    listing="transform, <its parameters>",
    extremes=lambda prm: [(str(prm["transform"]), prm)],
    example={"transform": "GaussianBlur", "blur_limit": [3, 7], "sigma_limit": [0.5, 3.0], "p": 0.5},
)
def _build_albumentations_step(step, kids):
    prm = dict(step.params)
    name = prm.pop("transform")
    return build_albumentations(name, prm, step.p, where=step.where, source=None, line=step.line)


def unknown_op_hint(op: str) -> str:
    """Extra help for an unknown step name: an albumentations class written as an op."""
    if isinstance(op, str) and op in albumentations_transforms():
        return f"; {op} is an albumentations transform: write  - albumentations: {{transform: {op}, ...}}"
    return ""
