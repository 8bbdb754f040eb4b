"""How a service is used, as its Service reports it (times are Unix seconds)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    in_flight: int  # requests holding a lease now (waiting for a start counts)
    last_request: float | None  # the last time a request started or ended
    idle_since: float | None  # running and unused since then; None while in use or not running
    stopped_idle: bool  # stopped because nobody used it
