"""Classify an engine's recent output (and its exit status) into a Diagnosis.

The line naming the cause is rarely the last one: vLLM prints the root cause inside a
traceback of the engine-core process, then the API server's own traceback, pydantic's
"Value error" wrapping and shutdown noise. So every line of the given text is scanned; a
line naming a root cause beats one that only gives context, which beats a wrapper that
only says something died (``Rule.tier``); among those the most specific cause wins (the
order of ``CAUSES``), then the line that says more (more named parts of its pattern
matched: numbers, a model name, a reason), then the later line.
"""

from __future__ import annotations

import re
import signal as signals
from functools import lru_cache

from . import model as c
from .model import Diagnosis
from .patterns import RULES
from .process_rules import own_stop
from .rules import Found, Rule

_LINES = re.compile(r"\r\n|\r|\n")  # tqdm bars redraw with a bare \r
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# A traceback quotes the raising source line, e.g. `raise ValueError("No available memory
# for the cache blocks. "`; the message line itself is better evidence.
_SOURCE_LINE = re.compile(r"\braise\s+[\w.]*\(")
_MAX_LINE = 400
_ENGINES_WITH_RULES = ("vllm", "ollama")
# Exit codes that say something on their own, when the output names no cause.
_EXIT_CODES = {
    127: (
        c.EXECUTABLE_MISSING,
        "command not found (exit 127): set the service's command to the engine's full path",
    ),
    126: (
        c.EXECUTABLE_MISSING,
        "command not executable (exit 126): check the file's permissions and that it is a program",
    ),
    0: (
        c.UNEXPECTED_EXIT,
        "engine exited on its own with code 0 although it was not asked to stop; "
        "read the last lines of its output",
    ),
}


def diagnose(text: str, engine: str | None = None) -> Diagnosis:
    """The most specific known cause in ``text``; ``unknown`` when nothing matches.

    ``engine`` ("vllm" / "ollama") restricts the patterns to that engine's messages; any
    other value, or None, tries them all.
    """
    # Most of a 64 KiB tail is noise and most rules' needles occur nowhere in it: one pass
    # over the whole text leaves the few rules worth trying line by line.
    whole = (_ANSI.sub("", text) if "\x1b" in text else text).lower()
    rules = [
        rule
        for rule in _rules_for(_known_engine(engine))
        if any(needle in whole for needle in rule.needles)
    ]
    best: tuple[tuple[tuple[int, int], bool, int, int], Rule, Found, str] | None = None
    for index, raw in enumerate(_LINES.split(text) if rules else ()):
        line = (_ANSI.sub("", raw) if "\x1b" in raw else raw).strip()
        lowered = line.lower()
        for rule in rules:
            found = rule.find(line, lowered, engine)
            if found is None:
                continue
            tier, order = rule.priority
            said = sum(value is not None for value in found.match.groupdict().values())
            rank = ((-tier, -order), not _SOURCE_LINE.search(line), said, index)
            if best is None or rank > best[0]:
                best = (rank, rule, found, line)
    if best is None:
        return Diagnosis(c.UNKNOWN, "no known failure message in the output; read its last lines")
    _, rule, found, line = best
    hint = rule.hint(found)  # may add derived numbers, e.g. an estimated max-model-len
    return Diagnosis(rule.cause, hint, _shorten(line), dict(found.numbers))


def diagnose_exit(
    text: str,
    engine: str | None = None,
    exit_code: int | None = None,
    signal: int | None = None,
    stopped_for: str | None = None,
) -> Diagnosis:
    """Classify an exit the supervisor did not ask for: the output first, then the status.

    ``exit_code`` may be a negative number (Python's way of reporting a signal) or 128+N
    (a shell's); both are read as signals. ``stopped_for``: the supervisor stopped the
    engine itself ("startup_timeout", "health"), so its signal says nothing about a cause.
    """
    found = diagnose(text, engine)
    if found.known and found.cause != c.KILLED:
        return found
    own = own_stop(stopped_for)
    if own is not None:
        return own
    if found.known:
        return found
    signal = _signal_of(exit_code, signal)
    if signal is not None:
        return _from_signal(signal)
    if exit_code in _EXIT_CODES:
        cause, hint = _EXIT_CODES[exit_code]
        return Diagnosis(cause, hint, numbers={"exit_code": exit_code})
    if exit_code is not None:
        return Diagnosis(
            c.UNKNOWN,
            f"exited with code {exit_code}; no known failure message, "
            "read the last lines of its output",
            numbers={"exit_code": exit_code},
        )
    return found


def _signal_of(exit_code: int | None, signal: int | None) -> int | None:
    if signal:
        return signal
    if exit_code is not None and exit_code < 0:
        return -exit_code
    if exit_code is not None and 128 < exit_code <= 128 + 64:
        return exit_code - 128
    return None


def _from_signal(number: int) -> Diagnosis:
    numbers: dict[str, c.Number] = {"signal": number}
    name = _signal_name(number)
    if number == signals.SIGKILL:
        hint = "killed (SIGKILL): out of host memory? check dmesg for the OOM killer"
        return Diagnosis(c.KILLED, hint, numbers=numbers)
    if number in (signals.SIGSEGV, signals.SIGABRT, signals.SIGBUS, signals.SIGILL):
        hint = f"engine crashed ({name}); read the last lines of its output"
        return Diagnosis(c.ENGINE_DEAD, hint, numbers=numbers)
    hint = f"killed by {name} from outside the supervisor (systemd, an admin, a script?)"
    return Diagnosis(c.KILLED, hint, numbers=numbers)


def _signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"signal {number}"


@lru_cache(maxsize=4)
def _rules_for(engine: str | None) -> tuple[Rule, ...]:
    return tuple(rule for rule in RULES if rule.applies_to(engine))


def _known_engine(engine: str | None) -> str | None:
    return engine if engine in _ENGINES_WITH_RULES else None


def _shorten(line: str) -> str:
    return line if len(line) <= _MAX_LINE else line[: _MAX_LINE - 1] + "…"
