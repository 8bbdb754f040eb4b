"""A strict YAML reader that remembers where every key and value came from.

PyYAML's SafeLoader silently keeps the last of two duplicate keys and forgets line numbers
once it has built Python objects. We compose the node tree ourselves so that duplicate keys
are errors and every value keeps its ``line:col`` for compiler-style messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based
    col: int  # 1-based


@dataclass
class LoadedYaml:
    data: Any
    marks: dict[Path, Mark] = field(default_factory=dict)

    def mark_for(self, path: Path) -> Mark:
        """The mark of ``path`` or of its nearest ancestor that has one."""
        for cut in range(len(path), -1, -1):
            mark = self.marks.get(tuple(path[:cut]))
            if mark is not None:
                return mark
        return Mark(1, 1)


class YamlSyntaxError(ValueError):
    def __init__(self, message: str, mark: Mark) -> None:
        super().__init__(message)
        self.mark = mark


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader used only to compose nodes and construct scalars."""


def _mark(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


def load_yaml(text: str) -> LoadedYaml:
    """Parse one YAML document; raise YamlSyntaxError with a position on any problem."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Mark(mark.line + 1, mark.column + 1) if mark else Mark(1, 1)
        raise YamlSyntaxError(_describe(exc), where) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(str(exc).splitlines()[0], Mark(1, 1)) from None
    finally:
        loader.dispose()
    result = LoadedYaml(data=None)
    if node is not None:
        result.data = _build(loader, node, (), result.marks)
    return result


def _describe(exc: yaml.MarkedYAMLError) -> str:
    problem = exc.problem or "invalid YAML"
    if "found character '\\t'" in problem:
        return "tab characters are not allowed for indentation in YAML; use spaces"
    context = f" ({exc.context})" if exc.context else ""
    return f"YAML syntax error: {problem}{context}"


def _build(loader: _StrictLoader, node: yaml.Node, path: Path, marks: dict[Path, Mark]) -> Any:
    marks[path] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        return _build_mapping(loader, node, path, marks)
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, (*path, i), marks) for i, item in enumerate(node.value)]
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"invalid value: {exc}", _mark(node)) from None


def _build_mapping(
    loader: _StrictLoader, node: yaml.MappingNode, path: Path, marks: dict[Path, Mark]
) -> dict[str, Any]:
    loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
    result: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise YamlSyntaxError("mapping keys must be plain strings", _mark(key_node))
        key = loader.construct_object(key_node)
        key = str(key).lower() if isinstance(key, bool) else str(key)
        if key in result:
            first = marks[(*path, key)]
            raise YamlSyntaxError(
                f"duplicate key {key!r} (first defined at line {first.line})", _mark(key_node)
            )
        marks[(*path, key)] = _mark(key_node)
        result[key] = _build(loader, value_node, (*path, key), marks)
        marks[(*path, key)] = _mark(key_node)  # keep the key's position, not the value's
    return result
