"""What the control API needs from the daemon: one protocol, implemented by DaemonBackend.

The status document (``status()``) is the stable schema behind ``status --json`` and the
metrics. Fields marked *metrics* feed Prometheus families; a backend that lacks them still
works (the families are then empty or fall back to totals)::

    {"version": "0.1.0",
     "daemon": {"pid": 1, "uptime": 12.3, "config_dir": "...", "started_at": 1700000000.0,
                "orphans_killed": 0,                                      # metrics
                "engines_adopted": 3, "ready": true,   # engines taken over at start; READY=1
                "generation": 1, "previous_version": "0.1.0"},  # upgrades in place so far
     "services": {NAME: {
         "engine": "vllm", "gpu": [0], "state": "ready", "pid": 123, "pids": [123, 124],
         "restarts": 2, "uptime": 55.1, "port": 8001, "start": "boot", "reason": "...",
         "degraded": null, "progress": null,
         "last_exit": {"code": 1, "signal": null, "cause": "cuda_oom", "hint": "...",
                       "at": 1700000000.0, "tail": ["last", "lines"]} | null,
         "restarts_by_reason": {"crash": 1, "health": 1},            # metrics
         "health": {"last_latency": 0.012, "failures": 0}}},          # metrics
     "gpus": {"available": bool, "reason": str | null, "gpus": [{
         "index": 0, "uuid": "GPU-..", "name": "..", "pressure": "normal",
         "memory": {"total": 0, "used": 0, "free": 0},               # bytes
         "services": {NAME: bytes}, "processes": [{"pid": 1, "name": "..", "used": 0,
                                                   "service": NAME | null}]}]},
     "models": [{"name": "gpt-oss:120b", "service": "ollama", "loaded": true,
                 "size_vram": 0, "expires_at": "...", "keep_alive": "forever",
                 "rule": "gpt-oss:*", "pinned": true}],
     "policy": {"mode": "enforce", "focus": [], "default": "30m",
                "rewrites": [{"model": "gpt-oss:120b", "rule": "gpt-oss:*", "count": 3}]},
     "reload": {"result": "applied", "at": 1700000000.0, "errors": [], "changes": {},
                "counts": {"applied": 1, "rejected": 0, "unchanged": 2},  # metrics
                "last_success_at": 1700000000.0}}                          # metrics

``uptime``/``pid`` are null when a service is not running; ``last_exit`` is null if it never
exited. ``policy.rewrites`` counts keep_alive rewrites since the daemon started, one entry per
(model, rule) pair.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from ..process.logline import LogLine

SERVICE_STATES = ("stopped", "starting", "ready", "stopping", "backoff", "fatal")
__all__ = ["ControlBackend", "LogLine"]

RELOAD_RESULTS = ("applied", "rejected", "unchanged", "queued")


class ControlBackend(Protocol):
    """Implemented by the daemon; the control API and the metrics only read through it."""

    def status(self) -> dict[str, Any]:
        """The status document described in this module's docstring."""
        ...

    async def start(self, name: str, wait: bool) -> None:
        """Start (clears fatal). ``wait``: return once ready. Raises UnknownServiceError,
        StartFailedError (or its AdmissionError / PortInUseError subclasses)."""
        ...

    async def stop(self, name: str) -> None:
        """Stop and return when the process group is gone. Raises UnknownServiceError."""
        ...

    async def restart(self, name: str, wait: bool) -> None:
        """Stop then start; same errors as ``start``."""
        ...

    async def reload(self, wait: bool, dry_run: bool) -> dict[str, Any]:
        """Re-read the config dir. Returns ``{"result": one of RELOAD_RESULTS,
        "errors": [str], "changes": {"restarted": [...], "started": [...],
        "stopped": [...], "updated": [...]}}``. ``dry_run`` validates and diffs only."""
        ...

    async def upgrade(self) -> dict[str, Any]:
        """Re-execute the daemon in place once the installed code is known to start; returns
        ``{"from": old version, "to": new version, "pid", "generation"}`` before the exec.
        Raises UpgradeError (new code cannot start, or an upgrade is under way)."""
        ...

    def log_tail(self, name: str, lines: int, since: float | None) -> list[LogLine]:
        """The last ``lines`` lines, oldest first; ``since`` is an absolute Unix time (lines
        with ``ts >= since``) or None. Raises UnknownServiceError."""
        ...

    def follow_logs(self, name: str) -> AsyncIterator[LogLine]:
        """New lines as they come, until the iterator is closed.

        Subscribe when *called*, not at the first ``__anext__`` (a plain method returning an
        async generator over a queue registered here), so no line is lost between
        ``log_tail`` and the first read. Duplicates of tail lines are dropped by the caller.
        May raise UnknownServiceError. The caller ``aclose()``-s it when the client leaves.
        """
        ...

    def gpus(self) -> dict[str, Any]:
        """``{"available": bool, "reason": str | None, "gpus": [...]}``, like status["gpus"]."""
        ...
