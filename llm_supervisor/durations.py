"""Durations as operators write them: ``30s``, ``10m``, ``1h30m``, plain seconds, ``forever``.

Values are float seconds; ``FOREVER`` is ``math.inf``. ``0`` means "unload now".
"""

from __future__ import annotations

import math
import re

FOREVER = math.inf

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|h|m|s))+")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_FOREVER_WORDS = {"forever", "-1", "inf", "infinite"}
_MAX_SECONDS = 100 * 365 * 86400.0  # a century; larger is a typo, and Go would overflow


def parse_duration(value: object) -> float:
    """Parse a duration; raise ValueError with a message meant for the operator."""
    if isinstance(value, bool):
        raise ValueError(
            f"expected a duration, got the YAML boolean {str(value).lower()} "
            "(on/off/yes/no are booleans in YAML 1.1); write 0, 30m or forever"
        )
    if isinstance(value, int) and abs(value) > _MAX_SECONDS:
        raise ValueError("duration is too large (over 100 years); write forever instead")
    if isinstance(value, int | float):
        return _from_number(float(value))
    if not isinstance(value, str):
        raise ValueError(
            f"expected a duration such as 30s, 10m, 1h30m or forever, got {value!r:.60}"
        )
    text = value.strip().lower()
    if text in _FOREVER_WORDS:
        return FOREVER
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return _from_number(float(text))
    if not _WHOLE.fullmatch(text):
        raise ValueError(
            f"expected a duration such as 30s, 10m, 1h30m or forever, got {value!r:.60}"
        )
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))
    if seconds > _MAX_SECONDS:
        raise ValueError("duration is too large (over 100 years); write forever instead")
    return seconds


def _from_number(seconds: float) -> float:
    if seconds == -1 or (math.isinf(seconds) and seconds > 0):
        return FOREVER
    if math.isnan(seconds):
        raise ValueError("expected a duration, got NaN")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative (except -1 for forever), got {seconds:g}")
    if seconds > _MAX_SECONDS:
        raise ValueError("duration is too large (over 100 years); write forever instead")
    return seconds


def format_duration(seconds: float) -> str:
    """Inverse of parse_duration, for humans: ``forever``, ``0s``, ``1h30m``, ``45s``."""
    if math.isinf(seconds):
        return "forever"
    if seconds < 60 and seconds != int(seconds):
        return f"{seconds:.3g}s"
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts) or "0s"


def to_ollama_keep_alive(seconds: float) -> int | str:
    """Ollama wants -1 for forever: a huge number overflows in Go and behaves like 0."""
    if math.isinf(seconds):
        return -1
    if seconds == int(seconds):
        return int(seconds)
    return f"{int(seconds * 1000)}ms"
