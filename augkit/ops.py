"""The op registry: augkit's named augmentation steps and how each becomes an albumentations transform.

Every op is registered with :func:`register_op` (a decorator over a dict), so the CLI's
``recipes ops`` listing, the validator and the tests all read the same table. albumentations
is used only from here and from :mod:`augkit.recipe`, so it can be swapped, and only through
:func:`augkit.albu.import_albumentations`, when a transform is built (reading the table is cheap).
"""
from __future__ import annotations

import functools
import inspect
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from .albu import import_albumentations
from .errors import RecipeError
from .params import Param, is_number, short, suggest
from .yamlio import BadNumber

#: Largest pixel size (per side, kernel, pad or crop) a pass-through albumentations parameter may ask
#: for: larger values pass albumentations' own checks but allocate tens of GB (Resize to 100000 px).
MAX_SIDE = 16384
#: Pass-through parameter names that are sizes in pixels (Resize height/width, LongestMaxSize max_size,
#: PadIfNeeded min_height, crop sizes, kernel and hole sizes, pads, grids): bounded by MAX_SIDE.
SIZE_KEY = re.compile(r"height|width|size|length|radius|^px$|_px$|^[xy]_(min|max)$|^padding$|_divisor$"
                      r"|grid|kernel|blur_limit")

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
    "border": Param("choice", None, choices=tuple(BORDER_MODES), help="how pixels outside the image are filled; default: the recipe's border"),
    "fill": Param("fill", None, help="fill value for border: constant; default: the recipe's fill"),
}


@dataclass
class OpSpec:
    name: str
    params: dict[str, Param]
    build: Callable[..., Any]
    doc: str
    geometric: bool = False
    example: dict = field(default_factory=dict)

    def all_params(self) -> dict[str, Param]:
        return {**self.params, **(GEOMETRY_PARAMS if self.geometric else {})}


OPS: dict[str, OpSpec] = {}


def register_op(name: str, *, params: dict[str, Param], doc: str, geometric: bool = False,
                example: dict | None = None):
    """Decorator: register ``build(params, p, border_mode, fill) -> albumentations transform``."""

    def deco(fn):
        if name in OPS:
            raise ValueError(f"op {name!r} registered twice")
        OPS[name] = OpSpec(name, params, fn, doc, geometric, example or {})
        return fn

    return deco


def list_ops() -> list[str]:
    return sorted(OPS)


def is_op(name: str) -> bool:
    return name in OPS


def get_op(name: str) -> OpSpec:
    if name not in OPS:
        raise KeyError(f"unknown op {name!r}" + suggest(name, list(OPS)))
    return OPS[name]


def _t(pair) -> tuple[float, float]:
    return (float(pair[0]), float(pair[1]))


# ------------------------------------------------------------------ the classic six

@register_op("flip", doc="Mirror the image. horizontal: left-right; vertical: up-down; "
             "both: left-right and up-down, each independently with probability 0.5.",
             params={"direction": Param("choice", "horizontal", choices=("horizontal", "vertical", "both"))},
             example={"direction": "horizontal", "p": 0.5})
def _flip(prm, p, border, fill):
    A = import_albumentations()
    if prm["direction"] == "horizontal":
        return A.HorizontalFlip(p=p)
    if prm["direction"] == "vertical":
        return A.VerticalFlip(p=p)
    return A.Sequential([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)], p=p)


@register_op("shift", geometric=True,
             doc="Translate by a fraction of the width (x) and height (y), sampled uniformly.",
             params={"x": Param("range", [-0.1, 0.1], lo=-1, hi=1, help="fraction of width"),
                     "y": Param("range", [-0.1, 0.1], lo=-1, hi=1, help="fraction of height")},
             example={"x": 0.1, "y": 0.1, "p": 0.5})
def _shift(prm, p, border, fill):
    A = import_albumentations()
    return A.Affine(translate_percent={"x": _t(prm["x"]), "y": _t(prm["y"])}, border_mode=border, fill=fill, p=p)


@register_op("rotate", geometric=True, doc="Rotate by an angle in degrees, sampled uniformly.",
             params={"degrees": Param("range", [-15.0, 15.0], lo=-360, hi=360)},
             example={"degrees": 15, "p": 0.5})
def _rotate(prm, p, border, fill):
    A = import_albumentations()
    return A.Rotate(limit=_t(prm["degrees"]), border_mode=border, fill=fill, p=p)


@register_op("affine", geometric=True,
             doc="Scale, shear (degrees), translate (fractions) and rotate (degrees) in one warp.",
             params={"scale": Param("range", [1.0, 1.0], lo=0.01, hi=10, scalar="around1"),
                     "shear": Param("range", [0.0, 0.0], lo=-89, hi=89),
                     "translate": Param("range", [0.0, 0.0], lo=-1, hi=1),
                     "rotate": Param("range", [0.0, 0.0], lo=-360, hi=360)},
             example={"scale": [0.9, 1.1], "shear": 10, "translate": 0.05, "rotate": 10, "p": 0.5})
def _affine(prm, p, border, fill):
    A = import_albumentations()
    tr = _t(prm["translate"])
    return A.Affine(scale=_t(prm["scale"]), keep_ratio=True, shear=_t(prm["shear"]), translate_percent={"x": tr, "y": tr},
                    rotate=_t(prm["rotate"]), border_mode=border, fill=fill, p=p)


@register_op("color", doc="Jitter brightness, contrast and saturation by factors (x means [1-x, 1+x]) "
             "and hue by a fraction of the color wheel (x means [-x, x]), as torchvision's ColorJitter: "
             "a parameter left out is not changed.",
             params={"brightness": Param("range", [1.0, 1.0], lo=0, hi=10, scalar="around1"),
                     "contrast": Param("range", [1.0, 1.0], lo=0, hi=10, scalar="around1"),
                     "saturation": Param("range", [1.0, 1.0], lo=0, hi=10, scalar="around1"),
                     "hue": Param("range", [0.0, 0.0], lo=-0.5, hi=0.5)},
             example={"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02, "p": 0.8})
def _color(prm, p, border, fill):
    A = import_albumentations()
    return A.ColorJitter(brightness=_t(prm["brightness"]), contrast=_t(prm["contrast"]),
                         saturation=_t(prm["saturation"]), hue=_t(prm["hue"]), p=p)


@register_op("linear", doc="out = image * a + b, with a and b sampled uniformly from their ranges, "
             "clipped to [0, 255] and truncated to uint8 (b is in pixel levels).",
             params={"a": Param("range", [0.8, 1.2], lo=0, hi=10, scalar="fixed"),
                     "b": Param("range", [-20.0, 20.0], lo=-255, hi=255, scalar="fixed")},
             example={"a": [0.8, 1.2], "b": [-20, 20], "p": 0.5})
def _linear(prm, p, border, fill):
    A = import_albumentations()
    # RandomBrightnessContrast with brightness_by_max computes clip(img * alpha + beta * 255)
    # with alpha = 1 + U(contrast_limit) and beta = U(brightness_limit): exactly a * x + b.
    a, b = _t(prm["a"]), _t(prm["b"])
    return A.RandomBrightnessContrast(brightness_limit=(b[0] / 255.0, b[1] / 255.0),
                                      contrast_limit=(a[0] - 1.0, a[1] - 1.0),
                                      brightness_by_max=True, ensure_safe_range=False, p=p)


# ------------------------------------------------------------------ any albumentations transform

@functools.lru_cache(maxsize=1)
def _transform_names() -> tuple[str, ...]:
    A = import_albumentations()
    names = []
    for name, obj in vars(A).items():
        if (inspect.isclass(obj) and issubclass(obj, (A.ImageOnlyTransform, A.DualTransform))
                and not inspect.isabstract(obj) and obj not in (A.ImageOnlyTransform, A.DualTransform)
                and not name.startswith("_")):
            names.append(name)
    return tuple(sorted(set(names)))


def albumentations_transforms() -> list[str]:
    """Names of albumentations 2.0.8 transforms that work on a single RGB image."""
    return list(_transform_names())


def _tuplify(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    if isinstance(v, dict):
        return {k: _tuplify(x) for k, x in v.items()}
    return v


def _check_passthrough_value(what: str, value: Any, is_size: bool, *, where: str, source: str | None,
                             line: int | None) -> None:
    """Refuse numbers YAML could not represent and sizes beyond :data:`MAX_SIDE`, before albumentations sees them."""
    if isinstance(value, BadNumber):
        raise RecipeError(f"{what}: {value!r}", source=source, where=where, line=line, allowed="a finite number")
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_passthrough_value(what, v, is_size, where=where, source=source, line=line)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_passthrough_value(f"{what}.{short(k)}", v, is_size or bool(SIZE_KEY.search(str(k))), where=where,
                                     source=source, line=line)
    elif is_size and is_number(value) and abs(value) > MAX_SIDE:
        raise RecipeError(f"{what}: {short(value)} is larger than augkit's bound on sizes ({MAX_SIDE} px)",
                          source=source, where=where, line=line, allowed=f"sizes up to {MAX_SIDE} px")


def build_albumentations(name: str, params: dict[str, Any], p: float, *, where: str, source: str | None,
                         line: int | None):
    """Build ``albumentations.<name>(**params, p=p)`` strictly: unknown or invalid arguments and
    any warning albumentations would print (it "fixes" some values silently) are errors."""
    A = import_albumentations()
    known = albumentations_transforms()
    if name not in known:
        raise RecipeError(f"unknown albumentations transform {name!r}" + suggest(name, known), source=source,
                          where=where, line=line, allowed="an albumentations 2.0.8 image transform class name")
    cls = getattr(A, name)
    if "p" in params:
        raise RecipeError("put p beside transform, not inside its parameters", source=source, where=where, line=line)
    for key, value in params.items():
        kline = params.line_of(key) if hasattr(params, "line_of") else line
        _check_passthrough_value(f"{name}: {key}", value, bool(SIZE_KEY.search(str(key))), where=where,
                                 source=source, line=kline)
    kwargs = _tuplify(params)
    # Only classes that define their own InitSchema take ``strict`` (MedianBlur, RandomRotate90 and
    # ToSepia do not); without it, an unknown argument is still a TypeError and a fix still a warning.
    strict = {"strict": True} if "InitSchema" in vars(cls) else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            t = cls(**kwargs, p=p, **strict)
        # Some fixes are silent (a reversed [low, high] range is sorted): compare what was stored.
        for key, given in kwargs.items():
            stored = getattr(t, key, None)
            if (isinstance(given, tuple) and isinstance(stored, tuple) and len(given) == len(stored)
                    and all(isinstance(v, (int, float)) for v in given + stored)
                    and tuple(map(float, given)) != tuple(map(float, stored))):
                raise ValueError(f"{key}: albumentations would silently change {list(given)} to {list(stored)}")
        return t
    except (ValueError, TypeError, UserWarning, DeprecationWarning) as exc:
        msg = "; ".join(ln.strip() for ln in str(exc).splitlines()
                        if ln.strip() and not ln.strip().startswith("For further information"))
        valid = sorted(getattr(cls, "InitSchema").model_fields) if hasattr(cls, "InitSchema") else []
        raise RecipeError(f"{name}: {msg}", source=source, where=where, line=line,
                          allowed=", ".join(k for k in valid if k not in ("strict",)) or None) from None
