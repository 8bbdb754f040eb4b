"""Turn pydantic's validation errors into compiler-style issues an operator can act on.

Pydantic reports locations in its own terms (union branch tags such as ``int`` or
``list[...]``, one error per union branch) and messages in Python terms. Here each error is
moved onto the YAML key it is about, union branches are merged into one "expected A or B"
message, and unknown keys get a "did you mean" from the fields that are valid at that spot.
"""

from __future__ import annotations

import difflib
import re
import shlex
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import ConfigIssue
from .fieldtypes import LocatedValueError
from .yamlload import LoadedYaml

Loc = tuple[str | int, ...]

# What each pydantic error type says was expected, as a noun phrase.
_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "string_type": "a string",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "dict_type": "a mapping (key: value)", "list_type": "a list", "tuple_type": "a list",
    "none_required": "nothing", "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
}  # fmt: skip
_BOUNDS = {
    "greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<",
}  # fmt: skip


def validation_issues(
    exc: ValidationError, doc: LoadedYaml, source: str, model: type[BaseModel]
) -> list[ConfigIssue]:
    """One issue per offending key, in file order of the errors pydantic found."""
    grouped: dict[Loc, list[Any]] = {}
    for err in exc.errors():
        grouped.setdefault(_yaml_loc(err, doc.data), []).append(err)
    issues = []
    for loc, errs in grouped.items():
        mark = doc.mark_for(loc)
        message = _message(errs[0], loc, model) if len(errs) == 1 else _union_message(errs)
        key = ".".join(str(part) for part in loc)
        issues.append(ConfigIssue(source, mark.line, mark.col, key, message))
    return issues


def _yaml_loc(err: Any, data: Any) -> Loc:
    """Keep the parts of pydantic's location that exist in the YAML data."""
    raw: list[str | int] = list(err["loc"])
    # Parts that may be named although the YAML lacks them: a missing key, or what a
    # validator pointed at below its field ("engine vllm needs 'model'").
    may_be_absent = len(raw) - 1 if err["type"] == "missing" else len(raw)
    error = (err.get("ctx") or {}).get("error")
    if isinstance(error, LocatedValueError):
        raw += error.subpath
    loc: list[str | int] = []
    node = data
    for i, part in enumerate(raw):
        if isinstance(node, dict) and str(part) in node:
            node = node[str(part)]
            loc.append(str(part))
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            loc.append(part)
        elif i >= may_be_absent:
            loc.append(part)
            break
    return tuple(loc)


def found(value: Any) -> str:
    """How a YAML value reads back to its author."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a YAML boolean; yes/no/on/off are booleans too)"
    if value is None:
        return "an empty value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int | float | str):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return f"a {type(value).__name__} ({value!s:.40})"


def _message(err: Any, loc: Loc, model: type[BaseModel]) -> str:
    kind, given, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "extra_forbidden":
        return _unknown_key(str(loc[-1]) if loc else "", loc[:-1], model)
    if kind == "missing":
        return f"required key {str(loc[-1])!r} is missing" if loc else "required key is missing"
    if kind == "value_error":
        return str(ctx.get("error") or err["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        return _literal(str(ctx.get("expected", "")), given)
    if kind in _BOUNDS:
        limit = next(iter(ctx.values()), "?")
        return f"expected a number {_BOUNDS[kind]} {limit}, got {found(given)}"
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length', 1)} item(s), got none"
    if kind == "string_pattern_mismatch":
        return f"expected text matching {ctx.get('pattern')}, got {found(given)}"
    expected = _EXPECTED.get(kind)
    if expected is None:
        return f"{err['msg']}, got {found(given)}"
    hint = ""
    if kind == "string_type" and isinstance(given, bool | int | float):
        hint = "; quote it if you meant the text"
    if kind in {"list_type", "tuple_type"} and isinstance(given, str):
        hint = _list_hint(given, loc)
    return f"expected {expected}, got {found(given)}{hint}"


def _list_hint(given: str, loc: Loc) -> str:
    if loc and loc[-1] == "command":  # argv: one item per word, no shell
        try:
            words = shlex.split(given)
        except ValueError:
            words = given.split()
        if len(words) > 1:
            return f"; write one item per word: [{', '.join(words)}] (no shell is involved)"
    return f"; for one item write [{given}]"


def _union_message(errs: Sequence[Any]) -> str:
    expected: list[str] = []
    for err in errs:
        phrase = _EXPECTED.get(err["type"]) or str(err["msg"]).removeprefix("Input should be ")
        if phrase not in expected:
            expected.append(phrase)
    choices = ", ".join(expected[:-1]) + f" or {expected[-1]}" if len(expected) > 1 else expected[0]
    return f"expected {choices}, got {found(errs[0].get('input'))}"


def _literal(expected: str, given: Any) -> str:
    options = re.findall(r"'([^']*)'", expected)
    hint = ""
    if isinstance(given, str):
        close = difflib.get_close_matches(given, options, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"expected {expected}, got {found(given)}{hint}"


def _unknown_key(key: str, parent: Loc, model: type[BaseModel]) -> str:
    wrong_file = _wrong_file(key, parent, model)
    if wrong_file:
        return wrong_file
    here = model_at(model, parent)
    valid = sorted(here.model_fields) if here else []
    close = difflib.get_close_matches(key, valid or _all_field_names(), n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    elsewhere = [name for name in _models() if key in name.model_fields and name is not here]
    if elsewhere and valid:
        return f"unknown key {key!r} here (valid: {', '.join(valid)}); is it indented wrongly?"
    return f"unknown key {key!r}" + (f"; valid keys: {', '.join(valid)}" if valid else "")


def _wrong_file(key: str, parent: Loc, model: type[BaseModel]) -> str | None:
    """A policy key at the top of a profile, or a profile saved as policy.yaml."""
    from .models import Policy, ProfileFile

    if parent or model not in (Policy, ProfileFile):
        return None
    other = ProfileFile if model is Policy else Policy
    if key not in other.model_fields or key in model.model_fields:
        return None
    if other is Policy:
        return f"unknown key {key!r}: a policy key; it belongs in policy.yaml, not in a profile"
    return (
        f"unknown key {key!r}: a profile key, but this file is the policy (policy.yaml); "
        "save the profile under another name, such as gpu0.yaml"
    )


def model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model whose fields are valid at ``loc`` (``services.x.health`` → HealthSpec)."""
    return _resolve(root, loc)


def _resolve(tp: Any, loc: Loc) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if not loc:
            return tp
        field = tp.model_fields.get(str(loc[0]))
        return _resolve(field.annotation, loc[1:]) if field else None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _resolve(args[0], loc)
    if origin in (typing.Union, types.UnionType):
        return next((m for a in args if (m := _resolve(a, loc)) is not None), None)
    if origin is dict and loc:
        return _resolve(args[1], loc[1:])
    if origin in (list, tuple) and loc and args:
        return _resolve(args[0], loc[1:])
    return None


def _models() -> list[type[BaseModel]]:
    from . import models

    return [
        obj
        for obj in vars(models).values()
        if isinstance(obj, type) and issubclass(obj, BaseModel) and obj is not BaseModel
    ]


def _all_field_names() -> list[str]:
    return sorted({name for model in _models() for name in model.model_fields})
