"""The albumentations pass-through: any albumentations 2.0.8 image transform as a recipe step, validated
strictly (unknown or invalid arguments, albumentations' warnings and its silent fixes are errors) and
bounded (numbers YAML cannot hold, sizes beyond :data:`MAX_SIDE`, growth beyond :data:`MAX_GROWTH`).
:mod:`augkit.recipe.ops` registers it.

Transforms that cannot work in a recipe are refused by a general rule, read from albumentations
itself rather than a list: those that need data besides the image (their ``targets_as_params``:
a mask for MaskDropout, metadata for OverlayElements, TextImage, Mosaic, reference images for FDA
and HistogramMatching, a box for RandomCropNearBBox, or a data key a trial run on a blank image
looks up: ``bboxes`` for BBoxSafeRandomCrop, ``volume`` for the 3D transforms) and those that only
run Python functions (every parameter a callable: Lambda), which a recipe cannot hold.
"""

from __future__ import annotations

import functools
import inspect
import re
import warnings
from typing import Any

import numpy as np

from augkit.albu import import_albumentations
from augkit.errors import RecipeError
from augkit.recipe.params import is_number, short, suggest
from augkit.recipe.yamlio import BadNumber

#: Largest pixel size (per side, kernel, pad or crop) a pass-through albumentations parameter may ask
#: for: larger values pass albumentations' own checks but allocate tens of GB (Resize to 100000 px).
MAX_SIDE = 16384
#: Pass-through parameter names that are sizes in pixels (Resize height/width, LongestMaxSize max_size,
#: PadIfNeeded min_height, crop sizes, kernel and hole sizes, pads, grids): bounded by MAX_SIDE.
#: Largest factor (per side) by which a pass-through step may enlarge an image: RandomScale's
#: 1 + scale_limit, Affine's scale with fit_output (the output grows to hold the whole image).
#: ``RandomScale(scale_limit=1000)`` passes albumentations' checks and asks for 1001x per side.
MAX_GROWTH = 4.0
_OWN_PARAMS = frozenset({"p", "always_apply", "strict", "name", "self"})
SIZE_KEY = re.compile(
    r"height|width|size|length|radius|^px$|_px$|^[xy]_(min|max)$|^padding$|_divisor$"
    r"|grid|kernel|blur_limit"
)


@functools.lru_cache(maxsize=1)
def _transform_names() -> tuple[str, ...]:
    A = import_albumentations()
    names = []
    for name, obj in vars(A).items():
        if (
            inspect.isclass(obj)
            and issubclass(obj, (A.ImageOnlyTransform, A.DualTransform))
            and not inspect.isabstract(obj)
            and obj not in (A.ImageOnlyTransform, A.DualTransform)
            and not name.startswith("_")
        ):
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


def _check_passthrough_value(
    what: str, value: Any, is_size: bool, *, where: str, source: str | None, line: int | None
) -> None:
    """Refuse numbers YAML could not represent and sizes beyond :data:`MAX_SIDE`, before albumentations sees them."""
    if isinstance(value, BadNumber):
        raise RecipeError(f"{what}: {value!r}", source=source, where=where, line=line, allowed="a finite number")
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_passthrough_value(what, v, is_size, where=where, source=source, line=line)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_passthrough_value(
                f"{what}.{short(k)}", v, is_size or bool(SIZE_KEY.search(str(k))), where=where, source=source, line=line
            )
    elif is_size and is_number(value) and abs(value) > MAX_SIDE:
        raise RecipeError(
            f"{what}: {short(value)} is larger than augkit's bound on sizes ({MAX_SIDE} px)",
            source=source,
            where=where,
            line=line,
            allowed=f"sizes up to {MAX_SIDE} px",
        )


def build_albumentations(
    name: str, params: dict[str, Any], p: float, *, where: str, source: str | None, line: int | None
):
    """Build ``albumentations.<name>(**params, p=p)`` strictly: unknown or invalid arguments and
    any warning albumentations would print (it "fixes" some values silently) are errors."""
    A = import_albumentations()
    known = albumentations_transforms()
    if name not in known:
        raise RecipeError(
            f"unknown albumentations transform {name!r}" + suggest(name, known),
            source=source,
            where=where,
            line=line,
            allowed="an albumentations 2.0.8 image transform class name",
        )
    cls = getattr(A, name)
    if "p" in params:
        raise RecipeError("put p beside transform, not inside its parameters", source=source, where=where, line=line)
    for key, value in params.items():
        kline = params.line_of(key) if hasattr(params, "line_of") else line
        _check_passthrough_value(
            f"{name}: {key}", value, bool(SIZE_KEY.search(str(key))), where=where, source=source, line=kline
        )
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
            if (
                isinstance(given, tuple)
                and isinstance(stored, tuple)
                and len(given) == len(stored)
                and all(isinstance(v, (int, float)) for v in given + stored)
                and tuple(map(float, given)) != tuple(map(float, stored))
            ):
                raise ValueError(f"{key}: albumentations would silently change {list(given)} to {list(stored)}")
    except (ValueError, TypeError, UserWarning, DeprecationWarning) as exc:
        msg = "; ".join(
            ln.strip()
            for ln in str(exc).splitlines()
            if ln.strip() and not ln.strip().startswith("For further information")
        )
        valid = sorted(cls.InitSchema.model_fields) if hasattr(cls, "InitSchema") else []
        raise RecipeError(
            f"{name}: {msg}",
            source=source,
            where=where,
            line=line,
            allowed=", ".join(k for k in valid if k not in ("strict",)) or None,
        ) from None
    _refuse_unusable(name, cls, t, where=where, source=source, line=line)
    _probe(name, cls, {**kwargs, **strict}, where=where, source=source, line=line)
    _check_growth(name, t, where=where, source=source, line=line)
    return t


def _refuse_unusable(name: str, cls: type[Any], t: Any, *, where: str, source: str | None, line: int | None) -> None:
    """Refuse a transform that needs more than one image (the rule in the module docstring)."""
    try:
        needs = list(t.targets_as_params)
    except Exception:  # noqa: BLE001 - a property that reads what only data would set
        needs = ["data"]
    if needs:
        raise RecipeError(
            f"{name} needs {', '.join(map(repr, needs))} besides the image, which a recipe step does not "
            "receive: it would fail on every image",
            source=source,
            where=where,
            line=line,
            allowed="albumentations transforms that need only the image",
        )
    params = [p for k, p in inspect.signature(cls.__init__).parameters.items() if k not in _OWN_PARAMS]
    params = [p for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    if params and all("Callable" in str(p.annotation) for p in params):
        raise RecipeError(
            f"{name} only runs Python functions, which a recipe cannot hold (recipes never run code)",
            source=source,
            where=where,
            line=line,
            allowed="albumentations transforms configured by values",
        )


def _probe(name: str, cls: type, kwargs: dict, *, where: str, source: str | None, line: int | None) -> None:
    """Run the step once (p=1) on a tiny blank image: a transform that looks up data besides the
    image (``bboxes`` for BBoxSafeRandomCrop, ``volume`` for the 3D transforms) raises KeyError
    there, and is refused like those that declare it. Other failures are left to the run, which
    reports them per file (they may depend on the image's size)."""
    A = import_albumentations()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            A.Compose([cls(**kwargs, p=1.0)], seed=0)(image=np.zeros((16, 16, 3), np.uint8))
    except KeyError as exc:
        raise RecipeError(
            f"{name} needs {str(exc.args[0])!r} besides the image, which a recipe step does not receive: "
            "it would fail on every image",
            source=source,
            where=where,
            line=line,
            allowed="albumentations transforms that need only the image",
        ) from None
    except Exception:  # noqa: BLE001,S110 - see the docstring
        pass


def _check_growth(name: str, t: Any, *, where: str, source: str | None, line: int | None) -> None:
    """Refuse steps that can enlarge an image by more than :data:`MAX_GROWTH` per side."""
    growth, what = 1.0, ""
    if name == "RandomScale":
        growth, what = 1.0 + max(t.scale_limit), "scale_limit"
    elif getattr(t, "fit_output", False) and isinstance(getattr(t, "scale", None), dict):  # Affine
        growth, what = max(max(map(abs, v)) for v in t.scale.values()), "scale (with fit_output)"
    if growth > MAX_GROWTH:
        raise RecipeError(
            f"{name}: {what} lets an image grow {growth:g}x per side, more than augkit's bound ({MAX_GROWTH:g}x)",
            source=source,
            where=where,
            line=line,
            allowed=f"growth up to {MAX_GROWTH:g}x per side",
        )
