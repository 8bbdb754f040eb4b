"""Requests held while their service starts: counted per service, bounded, shown to clients.

A participant whose request waits for a six-minute load should see where they stand ("3
ahead of you, about 2 min") instead of a spinner; ``GET /v1/queue`` and ``GET /api/queue``
answer that per model, and the counts feed status and metrics.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

from ..config.models import Config
from .routing import openai_model_list, openai_route


class WaitingRoom:
    """How many requests wait for each service to become ready. Only the gateway writes it."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def is_full(self, service: str, limit: int) -> bool:
        return self.counts[service] >= limit

    @contextlib.contextmanager
    def hold(self, service: str) -> Iterator[None]:
        self.counts[service] += 1
        try:
            yield
        finally:
            self.counts[service] -= 1
            if self.counts[service] <= 0:
                del self.counts[service]


def retry_after(eta_s: float | None, default: int) -> str:
    """A Retry-After value in whole seconds (RFC 9110 §10.2.3): the ETA, else a default."""
    if eta_s is None or not math.isfinite(eta_s):
        return str(default)
    return str(max(1, math.ceil(eta_s)))


def queue_document(
    config: Config, services: dict[str, dict[str, Any]], created: int = 0
) -> dict[str, Any]:
    """Per routable model: its service's state, requests waiting and in flight, the ETA."""
    rows = []
    for entry in openai_model_list(config, created)["data"]:
        up = openai_route(config, entry["id"])
        facts = services.get(up.service, {}) if up is not None else {}
        rows.append(
            {
                "model": entry["id"],
                "service": up.service if up is not None else None,
                "state": facts.get("state"),
                "waiting": facts.get("waiting", 0),
                "in_flight": facts.get("in_flight", 0),
                "eta_s": facts.get("eta_s"),
            }
        )
    return {"models": rows}
