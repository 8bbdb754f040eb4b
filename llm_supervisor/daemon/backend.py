"""What the control API and the gateway may ask of the daemon, each from the parts it needs.

Thin adapters: every request becomes an outcome asked of a Service or the Reloader; no
state is read here to decide whether to start or stop anything.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

from ..config.models import Config
from ..gpu.placement import Placement
from ..process.logline import LogLine
from ..reload.reloader import Reloader
from ..service.manager import Manager
from ..service.usage import Usage
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
        pins_loaded: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._manager = manager
        self._placement = placement
        self._reloader = reloader
        self._report = report
        self._upgrade = upgrade
        # The gateway's PinReconciler.wait_loaded; None without a gateway (no pins then).
        self._pins_loaded_hook = pins_loaded

    def status(self) -> dict[str, Any]:
        return self._report.document()

    def gpus(self) -> dict[str, Any]:
        return self._placement.status(self._manager.config)

    async def start(self, name: str, wait: bool) -> None:
        await self._manager.get(name).start(wait=wait)
        if wait:
            await self._pins_loaded(name)

    async def stop(self, name: str) -> None:
        await self._manager.get(name).stop("requested")

    async def restart(self, name: str, wait: bool) -> None:
        await self._manager.get(name).restart("requested", wait=wait)
        if wait:
            await self._pins_loaded(name)

    async def _pins_loaded(self, name: str) -> None:
        """``--wait`` on an Ollama service ends once the pins its ready started are loaded."""
        if self._pins_loaded_hook is not None:
            await self._pins_loaded_hook(name)

    async def reload(self, wait: bool, dry_run: bool) -> dict[str, Any]:
        if dry_run:
            return await self._reloader.dry_run()
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

    def lease(self, service: str) -> AbstractContextManager[object]:
        svc = self._manager.services.get(service)
        # A service a reload just removed: the request goes on to its error, nothing to hold.
        return svc.lease() if svc is not None else contextlib.nullcontext()

    async def stop_if_idle(self, service: str, idle_for: float) -> bool:
        return await self._manager.get(service).stop_if_idle(idle_for)

    def usage(self, service: str) -> Usage | None:
        svc = self._manager.services.get(service)
        return svc.usage() if svc is not None else None

    def eta(self, service: str) -> float | None:
        return self._manager.get(service).eta()

    def states(self) -> dict[str, str]:
        return {name: str(s.state) for name, s in self._manager.services.items()}
