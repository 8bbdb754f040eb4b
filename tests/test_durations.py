"""Durations as operators write them, and as Ollama must receive them."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_supervisor.durations import FOREVER, format_duration, parse_duration, to_ollama_keep_alive


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("1h30m15s", 5415.0),
        ("500ms", 0.5),
        ("1.5m", 90.0),
        (" 10M ", 600.0),
        ("0", 0.0),
        ("0s", 0.0),
        (0, 0.0),
        (45, 45.0),
        (2.5, 2.5),
        ("45", 45.0),
        ("forever", FOREVER),
        ("Forever", FOREVER),
        ("-1", FOREVER),
        (-1, FOREVER),
        (math.inf, FOREVER),  # YAML's .inf
    ],
)
def test_parse(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (False, "YAML boolean false"),  # keep_alive: off
        (True, "YAML boolean true"),  # keep_alive: yes
        ("10x", "expected a duration such as 30s"),
        ("m10", "expected a duration such as 30s"),
        ("1h 30m", "expected a duration such as 30s"),
        ("", "expected a duration such as 30s"),
        (None, "expected a duration such as 30s"),
        ([1], "expected a duration such as 30s"),
        (-5, "cannot be negative"),
        ("-2s", "expected a duration"),
        (math.nan, "NaN"),
        (-math.inf, "cannot be negative"),
        (10**400, "too large"),  # float() of it would overflow
        ("9" * 400 + "s", "too large"),
    ],
)
def test_parse_rejects(value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_duration(value)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(FOREVER, "forever"), (0, "0s"), (45, "45s"), (90, "1m30s"), (5400, "1h30m"), (0.5, "0.5s")],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10 * 365 * 86400))
def test_format_parse_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("seconds", "wire"), [(FOREVER, -1), (0, 0), (600, 600), (0.5, "500ms"), (1.25, "1250ms")]
)
def test_ollama_wire_value(seconds: float, wire: int | str) -> None:
    # -1, never a huge number: Go's Duration overflows and then behaves like 0 (unload).
    assert to_ollama_keep_alive(seconds) == wire
