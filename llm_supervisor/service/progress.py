"""Load progress read from an engine's output while it starts.

vLLM reports its phases in its log (weight shards n/m, memory profiling, torch.compile,
CUDA graph capture, API server start); Ollama reports runner start and load progress.
The patterns follow the wording of vLLM's and Ollama's own log lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_PCT = r"(\d{1,3})%"
_COUNT = r"(\d+)/(\d+)"

# (engine or None for all, pattern, phase); the first match wins, so specific lines go first.
_RULES: list[tuple[str | None, re.Pattern[str], str]] = [
    ("vllm", re.compile(rf"Loading safetensors checkpoint shards:\s*{_PCT}.*?{_COUNT}"),
     "loading weights"),
    ("vllm", re.compile(rf"Loading pt checkpoint shards:\s*{_PCT}.*?{_COUNT}"), "loading weights"),
    ("vllm", re.compile(r"(Starting to load model|Loading model from scratch|Loading weights)"),
     "loading weights"),
    ("vllm", re.compile(r"(Model loading took|Loading weights took)"), "loaded weights"),
    ("vllm", re.compile(r"(Memory profiling takes|profiling|Available KV cache memory)", re.I),
     "profiling memory"),
    ("vllm", re.compile(r"(# GPU blocks|KV cache size|GPU KV cache size|# CPU blocks)"),
     "allocating KV cache"),
    ("vllm", re.compile(r"(torch\.compile|Dynamo bytecode transform|Compiling a graph)"),
     "compiling"),
    ("vllm", re.compile(rf"Capturing CUDA graphs?.*?{_PCT}.*?{_COUNT}"), "capturing CUDA graphs"),
    ("vllm", re.compile(r"(Capturing CUDA graph|Graph capturing finished)"),
     "capturing CUDA graphs"),
    ("vllm", re.compile(r"(Starting vLLM API server|Application startup complete|Uvicorn running)"),
     "starting API server"),
    ("ollama", re.compile(r"model load progress (\d(?:\.\d+)?)"), "loading model"),
    ("ollama", re.compile(r"(llama runner started|waiting for llama runner)"), "loading model"),
    ("ollama", re.compile(r"(Listening on|starting llama server)"), "starting server"),
]  # fmt: skip


@dataclass(frozen=True)
class Progress:
    phase: str
    fraction: float | None
    detail: str
    since: float  # clock time the phase began

    def to_json(self, now: float) -> dict[str, object]:
        return {
            "phase": self.phase,
            "fraction": self.fraction,
            "detail": self.detail,
            "phase_elapsed": round(now - self.since, 3),
        }


def parse_line(line: str, engine: str) -> tuple[str, float | None, str] | None:
    """The phase (and fraction of it done) a log line announces, or None."""
    for rule_engine, pattern, phase in _RULES:
        if rule_engine not in (None, engine):
            continue
        match = pattern.search(line)
        if match is None:
            continue
        return phase, _fraction(match), line.strip()[:200]
    return None


def _fraction(match: re.Match[str]) -> float | None:
    numbers = [g for g in match.groups() if g is not None and _is_number(g)]
    if len(numbers) >= 3 and int(numbers[-1]) > 0:  # "n/m" wins over the percentage
        return min(1.0, int(numbers[-2]) / int(numbers[-1]))
    if len(numbers) == 1:  # "45" (percent) or "0.52" (fraction)
        value = float(numbers[0])
        return min(1.0, value / 100 if value > 1 else value)
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class ProgressTracker:
    """Keeps the latest phase of one start; a phase change resets its timer."""

    def __init__(self, engine: str, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.clock = clock
        self.current: Progress | None = None

    def feed(self, line: str) -> None:
        found = parse_line(line, self.engine)
        if found is None:
            return
        phase, fraction, detail = found
        since = self.current.since if self.current and self.current.phase == phase else None
        self.current = Progress(phase, fraction, detail, since or self.clock())
