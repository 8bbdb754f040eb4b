"""A strict YAML reader that remembers where every key and value came from.

PyYAML's SafeLoader silently keeps the last of two duplicate keys and forgets line numbers
once it has built Python objects. We compose the node tree ourselves so that duplicate keys
are errors and every value keeps its ``line:col`` for compiler-style messages. Anything the
file can do wrong (bad syntax, bad tags, recursive or exploding aliases, absurd nesting)
ends as a ``YamlSyntaxError`` with a position, never as another exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]

MAX_DEPTH = 64  # real profiles nest 5 levels; deeper is garbage or an attack
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}
MAX_NODES = 100_000  # stops alias bombs ("billion laughs") long before memory is at risk


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
    """``path`` is the key path where it went wrong, when parsing got that far."""

    def __init__(self, message: str, mark: Mark, path: Path = ()) -> None:
        super().__init__(message)
        self.mark = mark
        self.path = path


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader used only to compose nodes and construct scalars."""


def _mark(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


def load_yaml(text: str) -> LoadedYaml:
    """Parse one YAML document; raise YamlSyntaxError with a position on any problem."""
    try:
        loader = _StrictLoader(text)  # the reader already rejects control characters
    except yaml.reader.ReaderError as exc:
        raise _reader_error(text, exc) from None
    try:
        node = loader.get_single_node()
        result = LoadedYaml(data=None)
        if node is not None:
            result.data = _Builder(loader, result.marks).build(node, (), frozenset())
        return result
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Mark(mark.line + 1, mark.column + 1) if mark else Mark(1, 1)
        raise YamlSyntaxError(_describe(exc), where) from None
    except yaml.reader.ReaderError as exc:
        raise _reader_error(text, exc) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"YAML error: {str(exc).splitlines()[0]}", Mark(1, 1)) from None
    except RecursionError:
        raise YamlSyntaxError("YAML nesting is too deep", Mark(1, 1)) from None
    finally:
        loader.dispose()


def _reader_error(text: str, exc: yaml.reader.ReaderError) -> YamlSyntaxError:
    before = text[: exc.position]
    where = Mark(before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1)
    char = exc.character if isinstance(exc.character, int) else 0
    return YamlSyntaxError(f"control character U+{char:04X} is not allowed in YAML", where)


def _describe(exc: yaml.MarkedYAMLError) -> str:
    problem = exc.problem or "invalid YAML"
    if "found character '\\t'" in problem:
        return "tab characters are not allowed for indentation in YAML; use spaces"
    if "found another document" in problem:
        return "a file holds one YAML document, found a second one (a '---' line)"
    context = f" ({exc.context})" if exc.context else ""
    return f"YAML syntax error: {problem}{context}"


class _Builder:
    """Turns composed nodes into plain dicts/lists/scalars while recording marks."""

    def __init__(self, loader: _StrictLoader, marks: dict[Path, Mark]) -> None:
        self.loader = loader
        self.marks = marks
        self.count = 0
        self.written: dict[int, set[int]] = {}

    def build(self, node: yaml.Node, path: Path, stack: frozenset[int]) -> Any:
        self._guard(node, path, stack)
        self.marks[path] = _mark(node)
        inner = stack | {id(node)}
        if isinstance(node, yaml.CollectionNode) and node.tag not in _PLAIN_TAGS:
            raise YamlSyntaxError(f"unsupported tag {node.tag!r}", _mark(node), path)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, inner)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i), inner) for i, item in enumerate(node.value)]
        try:
            return self.loader.construct_object(node, deep=True)
        except Exception as exc:  # any tag constructor may fail on odd input (!!int abc)
            problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else None
            detail = problem or str(exc) or type(exc).__name__
            msg = f"invalid value {node.value!r}: {detail}"
            raise YamlSyntaxError(msg, _mark(node), path) from None

    def _guard(self, node: yaml.Node, path: Path, stack: frozenset[int]) -> None:
        self.count += 1
        if id(node) in stack:
            # Point at the key that uses the alias (set by _mapping), not at the anchor.
            where = self.marks.get(path, _mark(node))
            raise YamlSyntaxError("recursive alias: a value contains itself", where, path)
        if len(path) > MAX_DEPTH:
            raise YamlSyntaxError(f"nesting deeper than {MAX_DEPTH} levels", _mark(node), path)
        if self.count > MAX_NODES:
            msg = f"more than {MAX_NODES} values (are aliases expanding?)"
            raise YamlSyntaxError(msg, _mark(node), path)

    def _mapping(self, node: yaml.MappingNode, path: Path, stack: frozenset[int]) -> Any:
        # Keys written in this mapping may not repeat; keys pulled in by a merge (<<) may be
        # overridden, as YAML intends. Remember the written ones before flattening mutates
        # the node (an aliased node is flattened once and seen again later).
        written = self.written.setdefault(
            id(node), {id(k) for k, _ in node.value if k.tag != _MERGE_TAG}
        )
        self.loader.flatten_mapping(node)
        result: dict[str, Any] = {}
        seen: set[str] = set()  # keys written here so far
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                msg = "mapping keys must be plain strings"
                raise YamlSyntaxError(msg, _mark(key_node), path)
            # The key as written: `off:` stays "off" rather than becoming False -> "false".
            key = str(key_node.value)
            if id(key_node) in written and key in seen:
                first = self.marks[(*path, key)]
                msg = f"duplicate key {key!r} (first defined at line {first.line})"
                raise YamlSyntaxError(msg, _mark(key_node), (*path, key))
            if id(key_node) in written:
                seen.add(key)
            self.marks[(*path, key)] = _mark(key_node)
            result[key] = self.build(value_node, (*path, key), stack)
            self.marks[(*path, key)] = _mark(key_node)  # the key's position, not the value's
        return result
