"""Safe YAML loading that remembers line numbers and rejects duplicate keys.

PyYAML's ``safe_load`` refuses ``!!python/object`` tags but silently keeps the last of
duplicate keys and forgets where things were. Recipes need both: an error must name the
line. Mappings load as :class:`LineDict` (``.line`` and ``.key_lines``), sequences as
:class:`LineList` (``.line`` and ``.item_lines``).
"""
from __future__ import annotations

from typing import Any

import yaml

from .errors import RecipeError


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

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
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
                raise RecipeError("a mapping key must be a plain value", source=self.source,
                                  line=key_node.start_mark.line + 1) from None
            if key in out:
                raise RecipeError(f"duplicate key {key!r} (first at line {out.key_lines[key]})",
                                  source=self.source, line=key_node.start_mark.line + 1)
            out[key] = self.construct_object(value_node, deep=True)
            out.key_lines[key] = key_node.start_mark.line + 1
        return out

    def construct_sequence(self, node, deep=False):  # type: ignore[override]
        out = LineList(self.construct_object(child, deep=True) for child in node.value)
        out.line = node.start_mark.line + 1
        out.item_lines = [child.start_mark.line + 1 for child in node.value]
        return out


_Loader.add_constructor("tag:yaml.org,2002:map", lambda loader, node: loader.construct_mapping(node))
_Loader.add_constructor("tag:yaml.org,2002:seq", lambda loader, node: loader.construct_sequence(node))


def load_yaml(text: str, source: str = "recipe") -> Any:
    """Parse YAML safely; errors become :class:`RecipeError` with the line."""
    loader_cls = type("_BoundLoader", (_Loader,), {"source": source})
    try:
        loader = loader_cls(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except RecipeError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        if "could not determine a constructor" in str(exc):
            problem = ("tag not allowed: recipes are loaded with safe YAML only "
                       f"({str(exc).splitlines()[0].split('tag ')[-1]})")
        raise RecipeError(f"invalid YAML: {problem}", source=source, line=line) from None
