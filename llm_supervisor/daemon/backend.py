"""DaemonBackend: what the control API and the gateway may ask of the daemon.

A thin adapter: every request becomes an outcome asked of a Service or the Reloader; no
state is read here to decide whether to start or stop anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..config.models import Config
from ..process.output import LogLine
from .status import build_status

if TYPE_CHECKING:
    from ..service.manager import Manager
    from .daemon import Daemon


class DaemonBackend:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    @property
    def manager(self) -> Manager:
        return self.daemon.manager

    # -- control API -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return build_status(self.daemon)

    def gpus(self) -> dict[str, Any]:
        return self.daemon.placement.status(self.manager.config)

    async def start(self, name: str, wait: bool) -> None:
        await self.manager.get(name).start(wait=wait)

    async def stop(self, name: str) -> None:
        await self.manager.get(name).stop("requested")

    async def restart(self, name: str, wait: bool) -> None:
        await self.manager.get(name).restart("requested", wait=wait)

    async def reload(self, wait: bool, dry_run: bool) -> dict[str, Any]:
        reloader = self.daemon.reloader
        assert reloader is not None
        if dry_run:
            return reloader.dry_run()
        future = reloader.request()
        if not wait:
            return {"result": "queued", "errors": [], "changes": {}}
        return await asyncio.shield(future)

    async def upgrade(self) -> dict[str, Any]:
        return await self.daemon.request_upgrade()

    def log_tail(self, name: str, lines: int, since: float | None) -> list[LogLine]:
        return self.manager.log_tail(name, lines, since)

    def follow_logs(self, name: str) -> AsyncIterator[LogLine]:
        return self.manager.follow_logs(name)

    # -- gateway -----------------------------------------------------------------------

    def config(self) -> Config:
        return self.manager.config

    async def ensure_ready(self, service: str) -> None:
        svc = self.manager.get(service)
        timeout = svc.config.spec.health.startup_timeout or svc.engine.startup_timeout
        await svc.ensure_ready(timeout)

    async def stop_idle(self, service: str) -> None:
        await self.manager.get(service).stop("idle")

    def eta(self, service: str) -> float | None:
        return self.manager.get(service).eta()

    def states(self) -> dict[str, str]:
        return {name: str(s.state) for name, s in self.manager.services.items()}

    def note_request(self, service: str) -> None:
        self.manager.note_request(service)
