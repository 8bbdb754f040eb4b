"""What the control API and the gateway may ask of the daemon, each from the parts it needs.

Thin adapters: every request becomes an outcome asked of a Service or the Reloader; no
state is read here to decide whether to start or stop anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..config.models import Config
from ..gpu.placement import Placement
from ..process.logline import LogLine
from ..reload.reloader import Reloader
from ..service.manager import Manager
from .status import StatusReport


class DaemonBackend:
    """The control API's ControlBackend (control/backend.py)."""

    def __init__(
        self,
        manager: Manager,
        placement: Placement,
        reloader: Reloader,
        report: StatusReport,
        upgrade: Callable[[], Awaitable[dict[str, Any]]],
    ) -> None:
        self._manager = manager
        self._placement = placement
        self._reloader = reloader
        self._report = report
        self._upgrade = upgrade

    def status(self) -> dict[str, Any]:
        return self._report.document()

    def gpus(self) -> dict[str, Any]:
        return self._placement.status(self._manager.config)

    async def start(self, name: str, wait: bool) -> None:
        await self._manager.get(name).start(wait=wait)

    async def stop(self, name: str) -> None:
        await self._manager.get(name).stop("requested")

    async def restart(self, name: str, wait: bool) -> None:
        await self._manager.get(name).restart("requested", wait=wait)

    async def reload(self, wait: bool, dry_run: bool) -> dict[str, Any]:
        if dry_run:
            return self._reloader.dry_run()
        future = self._reloader.request()
        if not wait:
            return {"result": "queued", "errors": [], "changes": {}}
        return await asyncio.shield(future)

    async def upgrade(self) -> dict[str, Any]:
        return await self._upgrade()

    def log_tail(self, name: str, lines: int, since: float | None) -> list[LogLine]:
        return self._manager.log_tail(name, lines, since)

    def follow_logs(self, name: str) -> AsyncIterator[LogLine]:
        return self._manager.follow_logs(name)


class GatewayServices:
    """The gateway's GatewayBackend (gateway/backend.py): the services, by name."""

    def __init__(self, manager: Manager) -> None:
        self._manager = manager

    def config(self) -> Config:
        return self._manager.config

    async def ensure_ready(self, service: str) -> None:
        svc = self._manager.get(service)
        timeout = svc.config.spec.health.startup_timeout or svc.engine.startup_timeout
        await svc.ensure_ready(timeout)

    async def stop_idle(self, service: str) -> None:
        await self._manager.get(service).stop("idle")

    def eta(self, service: str) -> float | None:
        return self._manager.get(service).eta()

    def states(self) -> dict[str, str]:
        return {name: str(s.state) for name, s in self._manager.services.items()}

    def note_request(self, service: str) -> None:
        self._manager.note_request(service)
