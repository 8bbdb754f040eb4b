"""The rule type: one message pattern of vLLM or Ollama, the cause it means, and a hint.

The patterns themselves live in ``patterns.py``; where each wording comes from (vLLM and
Ollama source lines, issue threads) is recorded in tests/data/engine_logs/SOURCES.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .model import CAUSES, Number

HintFn = Callable[["Found"], str]

VLLM = frozenset({"vllm"})
OLLAMA = frozenset({"ollama"})

# How a matching line relates to the failure. Any ROOT line outranks any CONTEXT line, which
# outranks any WRAPPER line, wherever each sits in the tail; within a tier the cause's place
# in CAUSES decides.
ROOT = 0  # names what went wrong ("CUDA out of memory", "Address already in use")
# Not a failure on its own but the likely reason for one that follows, e.g. Ollama's
# "CUDA GPU is too old. Falling back to CPU mode" (it keeps running, slowly or out of RAM).
CONTEXT = 1
# Says only that something died ("Engine core initialization failed. See root cause above",
# "llama runner process has terminated"); the cause, if printed, is elsewhere.
WRAPPER = 2

_UNITS_GIB = {"": 1 / 2**30, "B": 1 / 2**30, "K": 1 / 2**20, "M": 1 / 2**10, "G": 1.0, "T": 2**10}
_SIZE = re.compile(r"([\d.]+)\s*([KMGT]?)i?B?", re.IGNORECASE)
# Group names ending in this suffix hold "12.5 MiB"-style sizes; they become ``<name>`` in GiB.
SIZE_SUFFIX = "__size"


def size_to_gib(text: str) -> float | None:
    """'350.00 MiB' -> 0.342; Ollama's and PyTorch's binary units both read as powers of 1024."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        return None
    return round(float(m.group(1)) * _UNITS_GIB[m.group(2).upper()], 3)


def to_number(text: str) -> Number | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Found:
    """One rule matching one line: the match, the numbers parsed from it, the engine asked for."""

    match: re.Match[str]
    numbers: dict[str, Number]
    engine: str | None

    def text(self, group: str, default: str = "") -> str:
        """A named group's text, or ``default`` where the pattern has or matched no such group."""
        try:
            value = self.match.group(group)
        except IndexError:
            return default
        return value if value is not None else default


@dataclass(frozen=True)
class Rule:
    """A message that names a failure's cause.

    ``needles`` are lower-case substrings of which one must occur in the line before the
    regex runs (a cheap filter: the daemon classifies up to 64 KiB per exit). ``tier`` is
    ROOT, CONTEXT or WRAPPER (see above).
    """

    cause: str
    needles: tuple[str, ...]
    pattern: re.Pattern[str]
    hint: HintFn
    engines: frozenset[str] | None = None
    exclude: re.Pattern[str] | None = None
    tier: int = ROOT

    @property
    def priority(self) -> tuple[int, int]:
        """Lower wins: root causes before context before wrappers, then CAUSES' order."""
        return (self.tier, CAUSES.index(self.cause))

    def applies_to(self, engine: str | None) -> bool:
        return engine is None or self.engines is None or engine in self.engines

    def find(self, line: str, lowered: str, engine: str | None) -> Found | None:
        if not any(needle in lowered for needle in self.needles):
            return None
        match = self.pattern.search(line)
        if match is None or (self.exclude is not None and self.exclude.search(line)):
            return None
        return Found(match, _numbers(match), engine)


def _numbers(match: re.Match[str]) -> dict[str, Number]:
    numbers: dict[str, Number] = {}
    for name, value in match.groupdict().items():
        if value is None:
            continue
        if name.endswith(SIZE_SUFFIX):
            gib = size_to_gib(value)
            if gib is not None:
                numbers[name.removesuffix(SIZE_SUFFIX)] = gib
            continue
        number = to_number(value)
        if number is not None:
            numbers[name] = number
    return numbers


def rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def fixed(text: str) -> HintFn:
    """A hint that needs nothing from the match."""
    return lambda _found: text


def by_engine(vllm: str, ollama: str, default: str = "vllm") -> HintFn:
    """Different advice per engine; ``default``'s when the caller did not say which engine.

    A message only one engine prints (llama.cpp's ``cudaMalloc failed``) sets ``default``.
    """

    def hint(found: Found) -> str:
        engine = found.engine if found.engine in ("vllm", "ollama") else default
        return ollama if engine == "ollama" else vllm

    return hint
