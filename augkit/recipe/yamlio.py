"""Safe YAML loading that remembers line numbers and rejects duplicate keys.

PyYAML's ``safe_load`` refuses ``!!python/object`` tags but silently keeps the last of
duplicate keys and forgets where things were. Recipes need both: an error must name the
line. Mappings load as :class:`LineDict` (``.line`` and ``.key_lines``), sequences as
:class:`LineList` (``.line`` and ``.item_lines``).

Hostile text is refused before it costs time or memory: nesting deeper than :data:`MAX_DEPTH`
(also counted through aliases), and anchors/aliases that would expand to more than
:data:`MAX_VALUES` values (a "billion laughs" file of a few hundred bytes). Numbers that no
parameter can take (integers beyond 64 bits or with thousands of digits, ``1e400``, ``.inf``,
``.nan``) load as :class:`BadNumber`, so the validator rejects them naming the step and key.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from augkit.errors import RecipeError
from augkit.recipe.params import short

#: Deepest nesting of mappings and lists a recipe may have (a composite step adds 3 levels).
MAX_DEPTH = 40
#: Most values (scalars, lists, mappings) a recipe may expand to once aliases are followed.
MAX_VALUES = 10_000
_INT_LIMIT = 2**63


class BadNumber:
    """A number in the YAML text that no parameter accepts; validators report it where it is used."""

    def __init__(self, text: str, reason: str):
        self.text, self.reason = text, reason

    def __repr__(self) -> str:
        t = self.text if len(self.text) <= 24 else f"{self.text[:12]}...({len(self.text)} characters)"
        return f"{t} ({self.reason})"


class LineDict(dict):
    line: int | None = None
    key_lines: dict

    def line_of(self, key: Any) -> int | None:
        return getattr(self, "key_lines", {}).get(key, self.line)


class LineList(list):
    line: int | None = None
    item_lines: list

    def line_of(self, index: int) -> int | None:
        lines = getattr(self, "item_lines", [])
        return lines[index] if index < len(lines) else self.line


class _Loader(yaml.SafeLoader):
    source = "recipe"
    _path: list[str] = []

    def compose_node(self, parent, index):
        # PyYAML composes recursively: stop at MAX_DEPTH, long before Python's recursion limit.
        if parent is None:
            self._path = []
        if isinstance(index, int):
            step = f"[{index}]"
        else:  # a mapping's value (index: its key node), a key (None) or the document (no parent)
            step = f".{str(index.value)[:40]}" if isinstance(index, yaml.ScalarNode) else ""
        self._path.append(step)
        try:
            if len(self._path) > MAX_DEPTH:
                raise RecipeError(
                    f"nested more than {MAX_DEPTH} levels deep",
                    source=self.source,
                    where=_path_text(self._path),
                    line=self.peek_event().start_mark.line + 1,
                )
            return super().compose_node(parent, index)
        finally:
            self._path.pop()

    def construct_yaml_int(self, node):
        text = str(node.value)
        if len(text.replace("_", "")) > 24:  # never convert thousands of digits (slow, or ValueError)
            return BadNumber(text, "too large")
        value = super().construct_yaml_int(node)
        return value if abs(value) < _INT_LIMIT else BadNumber(text, "too large")

    def construct_yaml_float(self, node):
        value = super().construct_yaml_float(node)
        return value if math.isfinite(value) else BadNumber(str(node.value), "not a finite number")

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(None, None, "expected a mapping", node.start_mark)
        self.flatten_mapping(node)
        out = LineDict()
        out.line = node.start_mark.line + 1
        out.key_lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise RecipeError(
                    "a mapping key must be a plain value", source=self.source, line=key_node.start_mark.line + 1
                ) from None
            if key in out:
                raise RecipeError(
                    f"duplicate key {short(key)} (first at line {out.key_lines[key]})",
                    source=self.source,
                    line=key_node.start_mark.line + 1,
                )
            out[key] = self.construct_object(value_node, deep=True)
            out.key_lines[key] = key_node.start_mark.line + 1
        return out

    def construct_sequence(self, node, deep=False):
        out = LineList(self.construct_object(child, deep=True) for child in node.value)
        out.line = node.start_mark.line + 1
        out.item_lines = [child.start_mark.line + 1 for child in node.value]
        return out


_Loader.add_constructor("tag:yaml.org,2002:map", lambda loader, node: loader.construct_mapping(node))  # type: ignore[arg-type]
_Loader.add_constructor("tag:yaml.org,2002:seq", lambda loader, node: loader.construct_sequence(node))  # type: ignore[arg-type]
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)


def _path_text(path: list[str]) -> str:
    """``train[0].one_of.steps[0]...`` for an error message; the middle of a long path is elided."""
    parts = [p for p in path if p]
    if len(parts) > 12:
        parts = parts[:6] + ["..."] + parts[-4:]
    return "".join(parts).lstrip(".")


def check_expansion(root: yaml.Node, source: str) -> None:
    """Refuse a node graph that aliases make deeper than MAX_DEPTH, larger than MAX_VALUES, or cyclic.

    Each distinct node is visited once (its expanded size and height are memoised), so the check
    costs time in proportion to the text, not to what it would expand to.
    """
    memo: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
    on_path: set[int] = set()

    def fail(node: yaml.Node, msg: str) -> RecipeError:
        return RecipeError(msg, source=source, line=node.start_mark.line + 1)

    def visit(node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in on_path:
            raise fail(node, "a YAML alias refers to a value that contains it (recursive alias)")
        if key not in memo:
            if depth > MAX_DEPTH:
                raise fail(node, f"nested more than {MAX_DEPTH} levels deep (counting YAML aliases)")
            children = _children(node)
            on_path.add(key)
            sizes = [visit(c, depth + 1) for c in children]
            on_path.discard(key)
            memo[key] = (1 + sum(s for s, _ in sizes), 1 + max((h for _, h in sizes), default=0))
        size, height = memo[key]
        if size > MAX_VALUES:
            raise fail(
                node,
                f"this value expands to more than {MAX_VALUES} values through YAML aliases "
                "(*name); write the values out or use fewer aliases",
            )
        if depth - 1 + height > MAX_DEPTH:
            raise fail(node, f"nested more than {MAX_DEPTH} levels deep (counting YAML aliases)")
        return size, height

    visit(root, 1)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def plain(v: Any) -> Any:
    """``v`` with LineDict/LineList turned into plain dicts and lists (for resolved recipes)."""
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


def load_yaml(text: str, source: str = "recipe") -> Any:
    """Parse YAML safely; errors become :class:`RecipeError` with the line."""
    loader_cls = type("_BoundLoader", (_Loader,), {"source": source})
    try:
        loader = loader_cls(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            check_expansion(node, source)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except RecipeError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        if "could not determine a constructor" in str(exc):
            problem = (
                "tag not allowed: recipes are loaded with safe YAML only "
                f"({str(exc).splitlines()[0].split('tag ')[-1]})"
            )
        raise RecipeError(f"invalid YAML: {problem}", source=source, line=line) from None
