"""The status document behind ``status --json``, the metrics and the status page."""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..durations import format_duration

if TYPE_CHECKING:
    from .daemon import Daemon


def build_status(daemon: Daemon) -> dict[str, Any]:
    manager = daemon.manager
    config = manager.config
    services = manager.services_status()
    policy_view = daemon.gateway.state.policy_status() if daemon.gateway else {}
    for row in policy_view.get("vllm", []):
        entry = services.get(row.get("service", ""))
        if entry is not None:
            entry["idle"] = row
    queue = daemon.gateway.queue_facts() if daemon.gateway else {}
    for name, entry in services.items():
        facts = queue.get(name, {})
        entry["waiting"] = facts.get("waiting", 0)
        entry["in_flight"] = facts.get("in_flight", 0)
    return {
        "version": __version__,
        "daemon": {
            "pid": os.getpid(),
            "uptime": time.monotonic() - daemon.started_monotonic,
            "started_at": daemon.started_at,
            "orphans_killed": daemon.orphans_killed,
            "engines_adopted": daemon.engines_adopted,  # at start, from a previous daemon
            "config_dir": str(daemon.options.config_dir),
            "gateway": daemon.gateway_address,
            "ready": daemon.ready,  # READY=1 sent: boot services launched, adoptions done
            "generation": daemon.handover.generation,  # upgrades in place so far
            "previous_version": daemon.handover.previous_version,
        },
        "services": services,
        "gpus": daemon.placement.status(config),
        "models": [_model_row(row, config) for row in policy_view.get("ollama", [])],
        "policy": {
            "mode": config.policy.keep_alive.mode,
            "client_unload": config.policy.keep_alive.client_unload,
            "default": format_duration(config.policy.keep_alive.default),
            "focus": list(config.policy.focus),
            "pin": list(config.policy.pin),
            "rewrites": _rewrites(daemon.gateway.stats.rewrites if daemon.gateway else Counter()),
        },
        "reload": daemon.reloader.last.to_json() if daemon.reloader else {},
    }


def _model_row(row: dict[str, Any], config: Any) -> dict[str, Any]:
    """The gateway's view of one Ollama model, with the schema's names."""
    return {**row, "name": row.get("model"), "pinned": row.get("model") in config.policy.pin}


def _rewrites(counts: Counter[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """Rewrites per (model, rule), summed over the gateway's kinds of rewrite."""
    rows: Counter[tuple[str, str]] = Counter()
    for (model, rule, _kind), count in counts.items():
        rows[(model, rule)] += count
    return [{"model": m, "rule": r, "count": n} for (m, r), n in sorted(rows.items())]


def summary_line(daemon: Daemon) -> str:
    """One line for systemd's STATUS=: '3/4 ready; gpu1 loading qwen3-8b 2m10s'."""
    services = daemon.manager.services.values()
    ready = sum(1 for s in services if str(s.state) == "ready")
    parts = [f"{ready}/{len(daemon.manager.services)} ready"]
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
