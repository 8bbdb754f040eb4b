"""``${NAME}`` in config strings: paths that differ per user or host without editing YAML.

Expansion runs on the parsed data before validation, on string values only (keys, numbers
and booleans stay as written), so every check sees what the engine will get. The syntax is
the shell's and docker compose's: ``${NAME}``, ``${NAME:-fallback}`` (used when NAME is unset
or empty), and ``$$`` for a literal ``$``. Any other ``$`` is an error rather than literal
text: ``$HOME/models`` would otherwise pass silently as a path that does not exist.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .yamlload import Path

_REF = re.compile(
    r"\$(?:(?P<dollar>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<fallback>[^}$]*))?\}|)"
)
_HINT = "write ${NAME} or ${NAME:-fallback} for an environment variable, $$ for a literal $"


def expand_tree(data: Any, env: Mapping[str, str]) -> tuple[Any, list[tuple[Path, str]]]:
    """``data`` with every string expanded, and the (key path, message) of each problem."""
    problems: list[tuple[Path, str]] = []
    return _walk(data, (), env, problems), problems


def _walk(node: Any, path: Path, env: Mapping[str, str], problems: list[tuple[Path, str]]) -> Any:
    if isinstance(node, str):
        value, problem = expand(node, env)
        if problem:
            problems.append((path, problem))
        return value
    if isinstance(node, dict):
        return {key: _walk(value, (*path, key), env, problems) for key, value in node.items()}
    if isinstance(node, list):
        return [_walk(item, (*path, i), env, problems) for i, item in enumerate(node)]
    return node


def expand(text: str, env: Mapping[str, str]) -> tuple[str, str | None]:
    """(expanded text, None), or (text unchanged, the first problem)."""
    if "$" not in text:  # nearly every value: skip the regex
        return text, None
    problems: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match["dollar"]:
            return "$"
        name = match["name"]
        if name is None:
            problems.append(f"'$' not followed by {{NAME}} in {text!r}: {_HINT}")
            return ""
        value = env.get(name)
        if match["fallback"] is not None and not value:
            return match["fallback"]
        if value is None:
            problems.append(
                f"environment variable {name} is not set; set it or write ${{{name}:-fallback}}"
            )
            return ""
        return value

    expanded = _REF.sub(replace, text)
    return (text, problems[0]) if problems else (expanded, None)
