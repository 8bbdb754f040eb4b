"""Decode a request body the way Ollama's Go server decodes it, so the policy sees what
Ollama will see.

Ollama binds request bodies with gin's ``ShouldBindJSON`` → Go's ``encoding/json``
``Decoder.Decode`` into a struct (server/routes.go, api/types.go). What that means, read in
the Go source (src/encoding/json/decode.go ``object``, fold.go ``foldName``):

- A key selects a struct field by exact name, else by case folding: ASCII letters fold to
  upper case and every other rune to the smallest rune of its ``unicode.SimpleFold`` orbit,
  so the Kelvin sign (U+212A) folds to ``K`` and the long s (U+017F) to ``S``.
  ``{"KEEP_ALIVE": 0}`` therefore sets ``keep_alive``.
- Each occurrence of a key is decoded in order into the same field: the last one wins.
  ``null`` leaves a string field as it was, sets a pointer (``KeepAlive *Duration``) to nil
  and a map (``Options``) to nil; an object decoded into an existing map adds to it.
- An error in any occurrence (a number where a string belongs, a bad duration) fails the
  request with 400, even when a later duplicate is valid.
- ``Decoder.Decode`` reads ONE value and ignores whatever follows it, so ``{...}{...}`` or
  ``{...}garbage`` is accepted by Ollama. The gateway refuses such bodies instead (400):
  nothing the policy did not read may reach the engine.
- Invalid UTF-8 inside strings becomes U+FFFD, as Go's decoder does; NaN and Infinity are
  not JSON in Go.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_FOLD: dict[int, int] = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)} | {
    0x212A: 107,
    0x017F: 115,
}
_GO_WHITESPACE = " \t\r\n"


class BodyError(ValueError):
    """A body the gateway will not forward; the message is shown to the client."""


def fold(key: str) -> str:
    """Go's foldName, restricted to what can equal an ASCII field name (lower case here)."""
    return key.translate(_FOLD)


@dataclass
class Decoded:
    """The top-level object with policy fields resolved; ``canonical``: the raw bytes already
    say exactly this (no case variants, no duplicates), so they may be forwarded as they are."""

    payload: dict[str, Any]
    canonical: bool
    occurrences: dict[str, list[Any]]  # every value each policy field had, in order


def _no_constants(name: str) -> Any:
    raise BodyError(f"invalid character {name[0]!r} looking for beginning of value")


def _hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    _LAST[0] = pairs  # the outermost object closes last: after the scan this is the top
    return obj


_LAST: list[list[tuple[str, Any]]] = [[]]  # synchronous use only (no await in between)
_DECODER = json.JSONDecoder(object_pairs_hook=_hook, parse_constant=_no_constants)


def decode_object(body: bytes, fields: dict[str, str]) -> Decoded | None:
    """Parse ``body``; None if it is not a JSON object (Ollama answers that itself).

    ``fields`` maps folded names to the struct's JSON names, for the fields whose value
    matters here (model, keep_alive, options). Raises BodyError for trailing data or a
    body that Go and Python would read differently.
    """
    text = body.decode("utf-8", errors="replace")  # Go: invalid bytes read as U+FFFD
    start = len(text) - len(text.lstrip(_GO_WHITESPACE))
    try:
        value, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError:
        return None  # malformed: Ollama's own 400 says what is wrong
    except RecursionError:  # Go allows 10,000 levels, Python's stack fewer: refuse, never guess
        raise BodyError("the request body is nested too deeply") from None
    pairs, _LAST[0] = _LAST[0], []  # do not keep the last body alive
    if end != len(text) and text[end:].strip(_GO_WHITESPACE):
        raise BodyError("the request body has data after the JSON value; send one JSON object")
    if not isinstance(value, dict):
        return None
    return _resolve(pairs, fields)


def _resolve(pairs: list[tuple[str, Any]], fields: dict[str, str]) -> Decoded:
    payload: dict[str, Any] = {}
    occurrences: dict[str, list[Any]] = {}
    canonical = True
    for key, value in pairs:
        name = fields.get(fold(key))
        if name is None:
            canonical = canonical and key not in payload
            payload[key] = value
            continue
        canonical = canonical and key == name and name not in payload
        occurrences.setdefault(name, []).append(value)
        payload[name] = _store(name, payload.get(name), value)
    return Decoded(payload, canonical, occurrences)


def _store(name: str, old: Any, new: Any) -> Any:
    """One occurrence of a policy field decoded into what the earlier ones left."""
    if name == "options":
        if new is None or not isinstance(new, dict):
            if new is not None:
                raise BodyError(_type_error(new, name, "map[string]interface {}"))
            return None
        return {**old, **new} if isinstance(old, dict) else new
    if name == "keep_alive":
        return new  # validated by the policy (Duration.UnmarshalJSON), null = none
    if new is None:
        return old  # null into a Go string: no-op
    if not isinstance(new, str):
        raise BodyError(_type_error(new, name, "string"))
    return new


def _type_error(value: Any, field: str, go_type: str) -> str:
    kind = {bool: "bool", dict: "object", list: "array", str: "string"}.get(type(value), "number")
    return f"json: cannot unmarshal {kind} into Go struct field .{field} of type {go_type}"
