"""Parameter schemas for recipe steps and TTA views: strict, with messages that say what is allowed.

A :class:`Param` describes one key. :func:`check_params` validates a mapping against a dict
of them: unknown keys get "did you mean", wrong types and out-of-range values name the
key, the value and the allowed range. Nothing is clamped or coerced silently (YAML's
``no``/``yes`` are booleans and are rejected where a number is expected).
"""

from __future__ import annotations

import difflib
import math
import reprlib
from dataclasses import dataclass
from typing import Any

from augkit.errors import RecipeError


@dataclass(frozen=True)
class Param:
    """One parameter.

    kind: ``number`` | ``int`` | ``range`` | ``choice`` | ``bool`` | ``fill``.
    For ``range``, ``scalar`` says how a single number ``x`` is read: ``sym`` -> ``[-x, x]``,
    ``around1`` -> ``[1 - x, 1 + x]``, ``fixed`` -> ``[x, x]``.
    """

    kind: str
    default: Any = None
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    scalar: str = "sym"
    help: str = ""

    def allowed(self) -> str:
        bounds = f"[{_fmt(self.lo)}, {_fmt(self.hi)}]"
        if self.kind == "number":
            return f"a number in {bounds}"
        if self.kind == "int":
            return f"an integer in {bounds}"
        if self.kind == "range":
            single = {"sym": "x means [-x, x]", "around1": "x means [1-x, 1+x]", "fixed": "x means [x, x]"}[self.scalar]
            return f"a number or [low, high] with low <= high, within {bounds} ({single})"
        if self.kind == "choice":
            return " | ".join(map(str, self.choices))
        if self.kind == "bool":
            return "true | false"
        if self.kind == "fill":
            return "a gray level 0-255 or [r, g, b]"
        return self.kind


def _fmt(v: float | None) -> str:
    if v is None:
        return "-inf"
    return str(int(v)) if float(v).is_integer() else str(v)


class _ShortRepr(reprlib.Repr):
    """reprlib with YAML's line-tracking containers treated as the dict and list they are."""

    def repr_LineDict(self, x: dict, level: int) -> str:
        return self.repr_dict(x, level)

    def repr_LineList(self, x: list, level: int) -> str:
        return self.repr_list(x, level)


_SHORT = _ShortRepr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 3, 6, 6, 60, 60
_SHORT.maxlong = 40


def short(value: Any, limit: int = 120) -> str:
    """A repr for error messages, bounded in size and time however large (or aliased) the value is."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def suggest(name: Any, options) -> str:
    if not isinstance(name, str) or len(name) > 100:  # nothing sensible to suggest; keep difflib cheap
        return ""
    close = difflib.get_close_matches(name, [str(o) for o in options], n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def check_value(spec: Param, key: str, value: Any, *, where: str, source: str | None, line: int | None) -> Any:
    """Validate one value; return its resolved form (ranges become [low, high] lists)."""

    def fail(msg: str) -> RecipeError:
        return RecipeError(f"{key}: {msg}", source=source, where=where, line=line, allowed=spec.allowed())

    def in_bounds(x: float) -> bool:
        return (spec.lo is None or x >= spec.lo) and (spec.hi is None or x <= spec.hi)

    if spec.kind in ("number", "int"):
        if not is_number(value) or (spec.kind == "int" and not float(value).is_integer()):
            raise fail(f"{short(value)} is not {'an integer' if spec.kind == 'int' else 'a number'}")
        if not in_bounds(value):
            raise fail(f"{short(value)} is out of range")
        return int(value) if spec.kind == "int" else float(value)
    if spec.kind == "range":
        if is_number(value):
            x = float(value)
            if spec.scalar == "sym":
                if x < 0:
                    raise fail(f"{short(value)}: a single number must be >= 0 (it means [-x, x])")
                pair = [-x, x]
            elif spec.scalar == "around1":
                if x < 0:
                    raise fail(f"{short(value)}: a single number must be >= 0 (it means [1-x, 1+x])")
                pair = [1 - x, 1 + x]
            else:
                pair = [x, x]
        elif isinstance(value, (list, tuple)) and len(value) == 2 and all(is_number(v) for v in value):
            pair = [float(value[0]), float(value[1])]
            if pair[0] > pair[1]:
                raise fail(f"{short(list(value))}: low is greater than high")
        else:
            raise fail(f"{short(value)} is not a number or a [low, high] pair")
        if not (in_bounds(pair[0]) and in_bounds(pair[1])):
            raise fail(f"{short(value)} (= {pair}) is out of range")
        return pair
    if spec.kind == "choice":
        if value not in spec.choices:
            raise fail(f"{short(value)} is not one of the choices" + suggest(value, spec.choices))
        return value
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise fail(f"{short(value)} is not true or false")
        return value
    if spec.kind == "fill":
        if is_number(value) and 0 <= value <= 255:
            return value
        if isinstance(value, (list, tuple)) and len(value) == 3 and all(is_number(v) and 0 <= v <= 255 for v in value):
            return list(value)
        raise fail(f"{short(value)} is not a valid fill")
    raise AssertionError(f"unknown param kind {spec.kind}")


def check_params(
    raw: Any, specs: dict[str, Param], *, what: str, where: str, source: str | None, line: int | None
) -> dict[str, Any]:
    """Validate a mapping of parameters; fill documented defaults; reject unknown keys."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{what} takes a mapping of parameters, got {short(raw)}",
            source=source,
            where=where,
            line=line,
            allowed=", ".join(specs) or "no parameters",
        )
    out: dict[str, Any] = {}
    for key, value in raw.items():
        kline = raw.line_of(key) if hasattr(raw, "line_of") else line
        if key not in specs:
            raise RecipeError(
                f"unknown parameter {short(key)} for {what}" + suggest(key, specs),
                source=source,
                where=where,
                line=kline,
                allowed=", ".join(specs) or "no parameters",
            )
        out[key] = check_value(specs[key], key, value, where=where, source=source, line=kline)
    for key, spec in specs.items():
        if key not in out:
            out[key] = spec.default
    return out
