"""TTA views: named, deterministic transforms of a test image, and presets built from them.

A *view* is a chain of primitive steps (``hflip``, ``shift``, ``crop``, ...), applied left to
right. This module only describes views (parsing, validation, presets, names); the batched
tensor implementation lives in :mod:`augkit.infer.tta`.

Presets combine with ``+`` as a product, as ttach does: ``flip+shift`` is every flip view
followed by every shift view (2 x 5 = 10 views). The identity view, where a preset has one,
comes first (five-crop and ten-crop have none).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from augkit.errors import RecipeError
from augkit.recipe.params import Param, check_params, short, suggest

VIEW_KINDS: dict[str, dict[str, Param]] = {
    "identity": {},
    "hflip": {},
    "vflip": {},
    "rot90": {"k": Param("int", 1, lo=1, hi=3, help="number of quarter turns, counter-clockwise")},
    "shift": {
        "x": Param("number", 0.0, lo=-0.5, hi=0.5, help="fraction of width, + moves content right"),
        "y": Param("number", 0.0, lo=-0.5, hi=0.5, help="fraction of height, + moves content down"),
    },
    "crop": {
        "position": Param("choice", "center", choices=("center", "tl", "tr", "bl", "br")),
        "size": Param("number", 0.875, lo=0.1, hi=1.0, help="crop side as a fraction of the image side"),
    },
    "scale": {"factor": Param("number", 1.0, lo=0.25, hi=4.0, help="resize factor; the model sees the resized image")},
}
MERGE_MODES = ("mean", "gmean", "max", "tsharpen")


@dataclass(frozen=True)
class Primitive:
    kind: str
    params: tuple = ()  # sorted (key, value) pairs

    @property
    def kwargs(self) -> dict:
        return dict(self.params)

    def label(self) -> str:
        if not self.params:
            return self.kind
        if self.kind == "crop":
            return f"crop({self.kwargs['position']},{self.kwargs['size']:g})"
        return (
            f"{self.kind}("
            + ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params)
            + ")"
        )


@dataclass(frozen=True)
class View:
    chain: tuple[Primitive, ...]
    name: str

    @property
    def is_identity(self) -> bool:
        return all(p.kind == "identity" for p in self.chain)


def make_view(*prims: Primitive, name: str | None = None) -> View:
    kept: list[Primitive] = []
    for p in prims:
        if p.kind == "identity":
            continue
        if kept and p.kind in ("hflip", "vflip") and kept[-1] == p:
            kept.pop()  # a flip twice is no flip: products like d4+flip don't repeat views
            continue
        kept.append(p)
    chain = tuple(kept) or (Primitive("identity"),)
    return View(chain, name or ">".join(p.label() for p in chain))


def prim(kind: str, **params) -> Primitive:
    resolved = check_params(params, VIEW_KINDS[kind], what=f"view {kind!r}", where="tta", source=None, line=None)
    return Primitive(kind, tuple(sorted(resolved.items())))


def _shift_views(d: float = 0.05) -> list[View]:
    return [make_view(prim("identity"))] + [
        make_view(prim("shift", x=x, y=y)) for x, y in ((d, 0.0), (-d, 0.0), (0.0, d), (0.0, -d))
    ]


def _crop_views(size: float = 0.875) -> list[View]:
    return [make_view(prim("crop", position=pos, size=size)) for pos in ("center", "tl", "tr", "bl", "br")]


PRESETS: dict[str, Callable[[], list[View]]] = {
    "identity": lambda: [make_view(prim("identity"))],
    "flip": lambda: [make_view(prim("identity")), make_view(prim("hflip"))],
    "vflip": lambda: [make_view(prim("identity")), make_view(prim("vflip"))],
    "d4": lambda: (
        [make_view(prim("identity"))]
        + [make_view(prim("rot90", k=k)) for k in (1, 2, 3)]
        + [make_view(prim("hflip"), *([prim("rot90", k=k)] if k else [])) for k in (0, 1, 2, 3)]
    ),
    "shift": _shift_views,
    "five-crop": _crop_views,
    "ten-crop": lambda: [make_view(*v.chain, *f) for f in ((), (prim("hflip"),)) for v in _crop_views()],
    "scales": lambda: [make_view(prim("identity"))] + [make_view(prim("scale", factor=f)) for f in (0.875, 1.125)],
}


def list_presets() -> list[str]:
    return sorted(PRESETS)


def preset_views(name: str) -> list[View]:
    """Views of a preset name; ``a+b`` is the product of presets a and b (duplicates removed)."""
    parts = [p.strip() for p in str(name).split("+")]
    for part in parts:
        if part not in PRESETS:
            raise RecipeError(
                f"unknown TTA preset {short(part)}" + suggest(part, PRESETS),
                where="tta",
                allowed=" | ".join(list_presets()) + " (combine with +)",
            )
    views: list[View] = [make_view(prim("identity"))]
    for part in parts:
        views = [make_view(*a.chain, *b.chain) for a, b in itertools.product(views, PRESETS[part]())]
    out, seen = [], set()
    for v in views:
        if v.chain not in seen:
            seen.add(v.chain)
            out.append(v)
    out.sort(key=lambda v: not v.is_identity)  # identity first, order otherwise kept
    return out


def parse_view(obj, *, where: str, source: str | None, line: int | None) -> View:
    """``hflip`` | ``{shift: {x: 0.05}}`` | ``{name: my-view, chain: [hflip, {crop: {...}}]}``."""
    if isinstance(obj, dict) and "chain" in obj:
        extra = set(obj) - {"chain", "name"}
        if extra:
            raise RecipeError(
                f"unknown key(s) {sorted(extra)} in a chained view",
                source=source,
                where=where,
                line=line,
                allowed="name, chain",
            )
        chain = obj["chain"]
        if not isinstance(chain, list) or not chain:
            raise RecipeError("chain must be a non-empty list of view steps", source=source, where=where, line=line)
        prims = [_parse_prim(c, where=f"{where}.chain[{i}]", source=source, line=line) for i, c in enumerate(chain)]
        name = obj.get("name")
        if name is not None and not isinstance(name, str):
            raise RecipeError(f"name must be a string, got {short(name)}", source=source, where=where, line=line)
        return make_view(*prims, name=name)
    return make_view(_parse_prim(obj, where=where, source=source, line=line))


def _parse_prim(obj, *, where: str, source: str | None, line: int | None) -> Primitive:
    if isinstance(obj, str):
        kind, params = obj, dict[str, Any]()
    elif isinstance(obj, dict) and len(obj) == 1:
        kind, params = next(iter(obj.items()))
    else:
        raise RecipeError(
            f"a view is a name or a one-key mapping, got {short(obj)}",
            source=source,
            where=where,
            line=line,
            allowed=" | ".join(VIEW_KINDS),
        )
    if kind not in VIEW_KINDS:
        raise RecipeError(
            f"unknown view {short(kind)}" + suggest(kind, VIEW_KINDS),
            source=source,
            where=where,
            line=line,
            allowed=" | ".join(VIEW_KINDS),
        )
    resolved = check_params(params, VIEW_KINDS[kind], what=f"view {kind!r}", where=where, source=source, line=line)
    return Primitive(kind, tuple(sorted(resolved.items())))


def view_to_yaml(view: View):
    """Inverse of :func:`parse_view` (used to write resolved recipes)."""
    items = [p.kind if not p.params else {p.kind: dict(p.params)} for p in view.chain]
    if len(items) == 1 and view.name == view.chain[0].label():
        return items[0]
    return {"name": view.name, "chain": items}
