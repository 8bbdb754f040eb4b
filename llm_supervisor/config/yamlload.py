"""A strict YAML reader that remembers where every key and value came from.

PyYAML's SafeLoader silently keeps the last of two duplicate keys and forgets line numbers
once it has built Python objects. We compose the node tree ourselves so that duplicate keys
are errors and every value keeps its ``line:col`` for compiler-style messages. Anything the
file can do wrong (bad syntax, bad tags, recursive or exploding aliases, absurd nesting)
ends as a ``YamlSyntaxError`` with a position, never as another exception.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import yaml

Path = tuple[str | int, ...]

MAX_DEPTH = 64  # real profiles nest 5 levels; deeper is garbage or an attack
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}
MAX_NODES = 100_000  # stops alias bombs ("billion laughs") long before memory is at risk


class Mark(NamedTuple):  # a tuple: made for every key and value, so it must be cheap
    line: int  # 1-based
    col: int  # 1-based


class Yaml11Number:
    """Mixin of a number YAML 1.1 read from a form people do not mean as that number.

    ``011434`` is octal (4892) and ``1:30`` is base 60 (90). The value stays a number so
    that nothing else changes; fields that expect a port, a size or a duration refuse it
    with ``explain()``.
    """

    raw: str
    form: str  # "octal" | "base-60"

    def explain(self) -> str:
        return f"{self.raw} is the {self.form} number {self} in YAML 1.1"


class Yaml11Int(Yaml11Number, int):
    pass


class Yaml11Float(Yaml11Number, float):
    pass


_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_STR_TAG = "tag:yaml.org,2002:str"
_OCTAL = re.compile(r"[-+]?0[0-7_]+")
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?")


def _yaml11_number(node: yaml.ScalarNode, value: Any) -> Any:
    """Wrap ints/floats written in YAML 1.1's octal or base-60 forms (see Yaml11Number)."""
    if node.tag not in (_INT_TAG, _FLOAT_TAG) or isinstance(value, bool):
        return value
    text = str(node.value)
    form = "base-60" if _SEXAGESIMAL.fullmatch(text) else "octal" if _OCTAL.fullmatch(text) else ""
    if not form:
        return value
    number: Yaml11Number = Yaml11Float(value) if isinstance(value, float) else Yaml11Int(value)
    number.raw, number.form = text, form
    return number


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


# libyaml composes ~7x faster than PyYAML's pure-Python parser (a 1 MiB profile: 0.6 s
# instead of 4 s). Its error messages are terser, so a file it rejects is parsed again by
# the pure-Python loader, whose messages (and positions) are the ones operators see.
_FastLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", _StrictLoader)


def _mark(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


def load_yaml(text: str) -> LoadedYaml:
    """Parse one YAML document; raise YamlSyntaxError with a position on any problem."""
    with gc_paused():
        if _FastLoader is not _StrictLoader:
            try:
                return _load_with(_FastLoader, text)
            except _ParserError:
                pass  # explain it with the pure-Python parser's words below
        return _load_with(_StrictLoader, text)


class _ParserError(YamlSyntaxError):
    """The parser itself rejected the text (as opposed to a duplicate key, a bad tag ...)."""


@contextmanager
def gc_paused() -> Iterator[None]:
    """Parsing allocates ~10^5 acyclic objects per MiB; the cycle collector, triggered every
    700 allocations, rescans them again and again and takes 3/4 of the time. Nothing built
    here is garbage until the parse ends, so collecting during it only costs."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load_with(loader_class: type[yaml.SafeLoader], text: str) -> LoadedYaml:
    try:
        loader = loader_class(text)  # the reader already rejects control characters
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
        raise _ParserError(_describe(exc), where) from None
    except yaml.reader.ReaderError as exc:
        raise _reader_error(text, exc) from None
    except yaml.YAMLError as exc:
        raise _ParserError(f"YAML error: {str(exc).splitlines()[0]}", Mark(1, 1)) from None
    except RecursionError:
        raise YamlSyntaxError("YAML nesting is too deep", Mark(1, 1)) from None
    finally:
        loader.dispose()


def _reader_error(text: str, exc: yaml.reader.ReaderError) -> YamlSyntaxError:
    before = text[: exc.position]
    where = Mark(before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1)
    char = exc.character if isinstance(exc.character, int) else 0
    return _ParserError(f"control character U+{char:04X} is not allowed in YAML", where)


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

    def __init__(self, loader: yaml.SafeLoader, marks: dict[Path, Mark]) -> None:
        self.loader = loader
        self.marks = marks
        self.count = 0
        self.written: dict[int, set[int]] = {}

    def build(self, node: yaml.Node, path: Path, stack: frozenset[int]) -> Any:
        self._guard(node, path, stack)
        if path not in self.marks:  # a mapping value keeps its key's mark (set by _mapping)
            self.marks[path] = _mark(node)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        inner = stack | {id(node)}
        if node.tag not in _PLAIN_TAGS:
            raise YamlSyntaxError(f"unsupported tag {node.tag!r}", _mark(node), path)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, inner)
        return [self.build(item, (*path, i), inner) for i, item in enumerate(node.value)]

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        # The tag's constructor directly: construct_object's bookkeeping (for recursive
        # collections) costs more than the constructor itself, and scalars cannot recurse.
        if node.tag == _STR_TAG:  # most values; what its constructor would return
            return node.value
        constructor = self.loader.yaml_constructors.get(node.tag)
        try:
            if constructor is None:  # unknown tags: let PyYAML raise its usual error
                return self.loader.construct_object(node, deep=True)
            return _yaml11_number(node, constructor(self.loader, node))
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
            key_path, key_mark = (*path, key), _mark(key_node)
            if id(key_node) in written and key in seen:
                first = self.marks[key_path]
                msg = f"duplicate key {key!r} (first defined at line {first.line})"
                raise YamlSyntaxError(msg, key_mark, key_path)
            if id(key_node) in written:
                seen.add(key)
            self.marks[key_path] = key_mark
            result[key] = self.build(value_node, key_path, stack)
        return result
