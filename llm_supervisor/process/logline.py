"""One line of a service's output, as the ring buffer, the control API and the CLI see it.

A leaf (stdlib only): the CLI decodes log lines without importing the output pump.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class LogLine:
    """One line of a service's output; ``ts`` is a Unix timestamp."""

    ts: float
    stream: str
    text: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogLine:
        return cls(float(data["ts"]), str(data.get("stream", "out")), str(data["text"]))
