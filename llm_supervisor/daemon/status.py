"""The status document behind ``status --json``, the metrics and the status page."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..config.models import Config
from ..durations import format_duration
from ..gateway.app import Gateway
from ..gpu.placement import Placement
from ..reload.reloader import Reloader
from ..service.manager import Manager


@dataclass(frozen=True)
class DaemonFacts:
    """What the status document says about the daemon itself."""

    config_dir: Path
    gateway: tuple[str, int] | None  # as configured; the bound port comes from the gateway
    orphans_killed: int = 0  # by the sweep at start (status and metrics)
    engines_adopted: int = 0  # running engines of a previous daemon taken over at start
    ready: bool = False  # READY=1 sent: adoptions done, boot services launched
    generation: int = 0  # upgrades in place this PID has been through
    previous_version: str | None = None  # before the last upgrade
    pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.time)
    started_monotonic: float = field(default_factory=time.monotonic)


class StatusReport:
    """The status document behind ``status --json``, the metrics and the page, built from
    the parts it reads: the services, GPU placement, the gateway's view, the last reload."""

    def __init__(
        self,
        facts: DaemonFacts,
        manager: Manager,
        placement: Placement,
        gateway: Gateway | None,
        reloader: Reloader,
        health: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.facts = facts
        self._health = health  # supervising, task errors, descriptor limits (the daemon's)
        self._manager = manager
        self._placement = placement
        self._gateway = gateway
        self._reloader = reloader

    def gateway_address(self) -> str | None:
        if self.facts.gateway is None:
            return None
        host, port = self.facts.gateway
        bound = self._gateway.port if self._gateway is not None else None
        return f"{host}:{bound or port}"

    def document(self) -> dict[str, Any]:
        config = self._manager.config
        services = self._manager.services_status()
        gateway = self._gateway
        policy_view = gateway.state.policy_status() if gateway else {}
        for row in policy_view.get("vllm", []):
            entry = services.get(row.get("service", ""))
            if entry is not None:
                entry["idle"] = row
        queue = gateway.queue_facts() if gateway else {}
        for name, entry in services.items():
            facts = queue.get(name, {})
            entry["waiting"] = facts.get("waiting", 0)
            entry["in_flight"] = facts.get("in_flight", 0)
        keep_alive = config.policy.keep_alive
        return {
            "version": __version__,
            "daemon": {
                "pid": self.facts.pid,
                "uptime": time.monotonic() - self.facts.started_monotonic,
                "started_at": self.facts.started_at,
                "orphans_killed": self.facts.orphans_killed,
                "engines_adopted": self.facts.engines_adopted,
                "ready": self.facts.ready,
                "generation": self.facts.generation,
                "previous_version": self.facts.previous_version,
                "config_dir": str(self.facts.config_dir),
                "gateway": self.gateway_address(),
                **self._health(),
            },
            "services": services,
            "gpus": self._placement.status(config),
            "models": [_model_row(row, config) for row in policy_view.get("ollama", [])],
            "policy": {
                "mode": keep_alive.mode,
                "client_unload": keep_alive.client_unload,
                "default": format_duration(keep_alive.default),
                "focus": list(config.policy.focus),
                "pin": list(config.policy.pin),
                "rewrites": _rewrites(gateway.stats.rewrites if gateway else Counter()),
            },
            "reload": self._reloader.last.to_json(),
        }


def _model_row(row: dict[str, Any], config: Config) -> dict[str, Any]:
    """The gateway's view of one Ollama model, with the schema's names."""
    model = str(row.get("model") or "")
    return {**row, "name": row.get("model"), "pinned": config.policy.is_pinned(model)}


def _rewrites(counts: Counter[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """Rewrites per (model, rule), summed over the gateway's kinds of rewrite."""
    rows: Counter[tuple[str, str]] = Counter()
    for (model, rule, _kind), count in counts.items():
        rows[(model, rule)] += count
    return [{"model": m, "rule": r, "count": n} for (m, r), n in sorted(rows.items())]


def summary_line(manager: Manager) -> str:
    """One line for systemd's STATUS=: '3/4 ready; gpu1 loading qwen3-8b 2m10s'."""
    services = manager.services.values()
    ready = sum(1 for s in services if str(s.state) == "ready")
    parts = [f"{ready}/{len(manager.services)} ready"]
    now = time.monotonic()
    for s in services:
        state = str(s.state)
        if state == "starting" and s.starting_since is not None:
            where = ",".join(f"gpu{g}" for g in s.config.gpus) or "cpu"
            phase = s.progress.phase if s.progress else "loading"
            parts.append(
                f"{where} {phase} {s.name} {format_duration(round(now - s.starting_since))}"
            )
        elif state in ("fatal", "backoff"):
            parts.append(f"{s.name} {state}")
    return "; ".join(parts)
