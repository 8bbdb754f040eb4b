"""What the gateway knows about usage and loaded models, for the loops and for status."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ..config.modelnames import canonical_model_name
from ..config.models import Config
from ..durations import format_duration
from .backend import GatewayBackend
from .idle import idle_deadline, service_keep_alive
from .keepalive import rule_for
from .stats import GatewayStats

Clock = Callable[[], float]
MAX_MODEL_ENTRIES = 4096  # per-model memory beyond this keeps only configured or loaded models


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def parse_expires_at(value: object) -> float | None:
    """Epoch seconds from Ollama's RFC 3339 ``expires_at`` (Go may print nanoseconds)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


class PolicyState:
    """What the gateway saw of Ollama models: last request and in-flight count per model, and
    the last ``/api/ps`` of each Ollama service. Only the gateway's tasks mutate it. (Usage per
    service is the Service's own: ``backend.usage``.)"""

    def __init__(self, backend: GatewayBackend, stats: GatewayStats, clock: Clock = time.time):
        self.backend = backend
        self.stats = stats
        self.clock = clock
        self.model_last_request: dict[str, float] = {}  # canonical Ollama model → start or end
        self.models_in_flight: Counter[str] = Counter()
        self.ps: dict[str, list[Mapping[str, Any]] | None] = {}  # None: service unreachable

    def request_started(self, model: str) -> None:
        self.note_model(model)
        self.models_in_flight[canonical_model_name(model)] += 1

    def request_ended(self, model: str) -> None:
        name = canonical_model_name(model)
        self._note(name, self.clock())
        self.models_in_flight[name] -= 1
        if self.models_in_flight[name] <= 0:  # client-chosen names must not pile up
            del self.models_in_flight[name]

    def note_model(self, model: str) -> None:
        self._note(canonical_model_name(model), self.clock())

    def _note(self, model: str, now: float) -> None:
        self.model_last_request[model] = now
        if len(self.model_last_request) > MAX_MODEL_ENTRIES:
            self._forget_strangers()

    def _forget_strangers(self) -> None:
        """Keep the models the config names or an Ollama has loaded; a flood of random names
        (each a 404 from Ollama) must not grow the daemon without bound."""
        keep = set(self.stats.known())
        for rows in self.ps.values():
            keep.update(canonical_model_name(str(m.get("name", ""))) for m in rows or ())
        for name in [m for m in self.model_last_request if m not in keep]:
            del self.model_last_request[name]

    def busy_models(self) -> frozenset[str]:
        return frozenset(m for m, n in self.models_in_flight.items() if n > 0)

    def policy_status(self) -> dict[str, Any]:
        """Per Ollama model: loaded, expires_at, size_vram, rule; per vLLM: last use, deadline."""
        config = self.backend.config()
        ka = config.policy.keep_alive
        return {
            "keep_alive": {
                "default": format_duration(ka.default),
                "mode": ka.mode,
                "client_unload": ka.client_unload,
                "rules": [
                    {"match": r.match, "keep_alive": format_duration(r.keep_alive)}
                    for r in ka.rules
                ],
            },
            "pin": list(config.policy.pin),
            "focus": list(config.policy.focus),
            "ollama_options": dict(config.policy.ollama_options),
            "ollama": self._ollama_rows(config),
            "vllm": self._vllm_rows(config),
            "stats": self.stats.snapshot(),
        }

    def _ollama_rows(self, config: Config) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for name, svc in config.services.items():
            if svc.spec.engine != "ollama":
                continue
            listed = self.ps.get(name) or ()
            loaded = {canonical_model_name(str(m.get("name", ""))): m for m in listed}
            names = dict.fromkeys([*map(canonical_model_name, svc.spec.models), *loaded])
            for model in names:
                rows.append(self._ollama_row(name, model, loaded.get(model), config))
        return rows

    def _ollama_row(
        self, service: str, model: str, ps: Mapping[str, Any] | None, config: Config
    ) -> dict[str, Any]:
        rule, seconds = rule_for(model, config.policy)
        return {
            "service": service,
            "model": model,
            "reachable": self.ps.get(service) is not None,
            "loaded": ps is not None,
            "expires_at": ps.get("expires_at") if ps else None,
            "size_vram": ps.get("size_vram") if ps else None,
            "keep_alive": format_duration(seconds),
            "rule": rule,
            "last_request": iso(self.model_last_request.get(model)),
        }

    def _vllm_rows(self, config: Config) -> list[dict[str, Any]]:
        rows = []
        for name, svc in config.services.items():
            if svc.spec.engine != "vllm":
                continue
            rule, seconds = service_keep_alive(svc.spec, config.policy)
            usage = self.backend.usage(name)
            if usage is None:
                continue  # removed by a reload a moment ago
            rows.append(
                {
                    "service": name,
                    "model": svc.spec.public_name,
                    "keep_alive": format_duration(seconds),
                    "rule": rule,
                    "last_request": iso(usage.last_request),
                    "in_flight": usage.in_flight,
                    "idle_deadline": iso(idle_deadline(usage.idle_since, seconds)),
                    "stopped_idle": usage.stopped_idle,
                }
            )
        return rows

    def record_ps(self, service: str, models: Sequence[Mapping[str, Any]] | None) -> None:
        self.ps[service] = list(models) if models is not None else None
