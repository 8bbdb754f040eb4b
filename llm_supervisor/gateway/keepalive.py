"""The central keep_alive policy as pure functions.

Ollama's semantics, read in ollama/ollama:
- api/types.go ``Duration.UnmarshalJSON``: a JSON number is seconds (negative → forever,
  stored as MaxInt64); a string goes through Go's ``time.ParseDuration`` (negative →
  forever); anything else is "Unsupported type". A parse error fails the request with 400
  and the error text. ``null`` or an absent field leaves the pointer nil: "no opinion".
- ``time.Duration(t * float64(time.Second))`` overflows for huge numbers; on amd64 the
  conversion yields MinInt64, a negative duration, which server/sched.go treats like 0
  (unload as soon as the last request ends). We model that as 0.
- Forever must therefore be sent as ``-1``, never as a big number.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import cast

from ..config.modelnames import matches_model_pattern
from ..config.models import Policy
from ..durations import FOREVER, format_duration, to_ollama_keep_alive

_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_MAX_NS = 2**63 - 1

KeepAliveValue = int | float | str


class KeepAliveParseError(ValueError):
    """The value Ollama itself would reject with 400; the message is Ollama's."""


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _leading(s: str, digits: str = "0123456789") -> tuple[str, str]:
    i = 0
    while i < len(s) and s[i] in digits:
        i += 1
    return s[:i], s[i:]


def parse_go_duration(orig: str) -> int:
    """Nanoseconds, like Go's ``time.ParseDuration`` (same error texts)."""
    invalid = KeepAliveParseError("time: invalid duration " + _go_quote(orig))
    s, neg = orig, False
    if s and s[0] in "+-":
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        raise invalid
    total = 0
    while s:
        if not (s[0] == "." or (s[0].isascii() and s[0].isdigit())):
            raise invalid
        whole, s = _leading(s)
        frac = ""
        if s.startswith("."):
            frac, s = _leading(s[1:])
        if not whole and not frac:
            raise invalid
        unit_end = 0
        while unit_end < len(s) and not (s[unit_end] == "." or s[unit_end] in "0123456789"):
            unit_end += 1
        if unit_end == 0:
            raise KeepAliveParseError("time: missing unit in duration " + _go_quote(orig))
        unit, s = s[:unit_end], s[unit_end:]
        if unit not in _NS:
            raise KeepAliveParseError(
                f"time: unknown unit {_go_quote(unit)} in duration {_go_quote(orig)}"
            )
        value = int(whole or "0") * _NS[unit]
        if frac:
            value += int(int(frac) * (_NS[unit] / 10 ** len(frac)))
        total += value
        if total > 2**63:
            raise invalid
    if not neg and total > _MAX_NS:
        raise invalid
    return -total if neg else total


def parse_ollama_keep_alive(value: object) -> float | None:
    """Seconds as Ollama would store them: None (no opinion), math.inf (forever), 0 (unload)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise KeepAliveParseError("Unsupported type: 'bool'")
    if isinstance(value, int | float):
        if value < 0:
            return FOREVER
        if value * 1e9 >= 2**63:  # overflows int64: negative on amd64 → like 0
            return 0.0
        return float(value)
    if isinstance(value, str):
        ns = parse_go_duration(value)
        return FOREVER if ns < 0 else ns / 1e9
    kind = "map[string]interface {}" if isinstance(value, dict) else "[]interface {}"
    raise KeepAliveParseError(f"Unsupported type: '{kind}'")


def rule_for(model: str, policy: Policy) -> tuple[str, float]:
    """The rule that decides a model's keep_alive: (rule label, seconds)."""
    if policy.is_pinned(model):
        return "pin", FOREVER
    for rule in policy.keep_alive.rules:
        if matches_model_pattern(model, rule.match):
            return rule.match, rule.keep_alive
    return "default", policy.keep_alive.default


def focus_allows(model: str, policy: Policy) -> bool:
    return not policy.focus or any(matches_model_pattern(model, f) for f in policy.focus)


@dataclass(frozen=True)
class Decision:
    """What the gateway does with one request's keep_alive, and why."""

    applied: KeepAliveValue | None  # the wire value sent upstream; None: leave it absent
    asked: KeepAliveValue | None  # the client's raw value; None: it sent none
    rule: str  # "pin", a rule's match glob, or "default"
    changed: bool  # the request was modified
    reason: str
    policy_seconds: float

    @property
    def asked_text(self) -> str:
        return "none" if self.asked is None else str(self.asked)

    @property
    def applied_text(self) -> str:
        return "none" if self.applied is None else str(self.applied)


def _wanted(asked: float | None, target: float, mode: str) -> tuple[bool, str]:
    """(replace the client's value?, reason) for enforce/floor when the client may not unload."""
    if asked is None:
        return True, "client sent none"
    if asked <= 0:
        return True, "client unload denied"
    if asked == target:
        return False, "client value equals policy"
    if mode == "floor" and asked > target:
        return False, "client value above floor"
    return True, "raised to floor" if mode == "floor" else "enforced"


def resolve_keep_alive(model: str, client_value: object, policy: Policy) -> Decision:
    """Decide the keep_alive sent upstream; raises KeepAliveParseError like Ollama would."""
    asked = parse_ollama_keep_alive(client_value)
    raw = cast(KeepAliveValue | None, client_value)  # parse accepted it: None, number or str
    rule, target = rule_for(model, policy)
    settings = policy.keep_alive
    keep = Decision(raw, raw, rule, False, "", target)
    if settings.mode == "observe":
        would = "" if asked == target else f"; policy would apply {format_duration(target)}"
        return replace(keep, reason="observe" + would)
    if asked is not None and asked <= 0 and settings.client_unload == "allow":
        return replace(keep, reason="client unload allowed")
    swap, reason = _wanted(asked, target, settings.mode)
    if not swap:
        return replace(keep, reason=reason)
    return Decision(to_ollama_keep_alive(target), raw, rule, True, reason, target)
