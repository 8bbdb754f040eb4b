"""Manager: the set of services built from the config; boot, shutdown, add and remove."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Sequence
from pathlib import Path
from typing import Any

from ..config.models import Config, ServiceConfig
from ..engines.base import Prober, make_prober
from ..errors import UnknownServiceError
from ..logsetup import get_logger
from ..process.logline import LogLine
from ..process.registry import GroupRegistry
from ..process.tree import find_marked_async, kill_refs
from .deps import GpuHooks, ServiceDeps, StateListener
from .gate import StartGate
from .service import Service
from .starts import StartHistory

log = get_logger(__name__)


class Manager:
    def __init__(
        self,
        config: Config,
        *,
        registry: GroupRegistry,
        log_dir: Path | None,
        http: Prober | None = None,
        gate: StartGate | None = None,
        gpu_hooks: GpuHooks | None = None,
        listeners: Sequence[StateListener] = (),
        start_history: StartHistory | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.log_dir = log_dir
        self.http = http or make_prober()  # one session: aiohttp keys its pool by host:port
        self.gate = gate or StartGate()
        self.listeners: list[StateListener] = list(listeners)  # told of every state change
        self.gpu_hooks = gpu_hooks or GpuHooks()
        self.start_history = start_history or StartHistory(None)
        self.services: dict[str, Service] = {}
        for svc in config.services.values():
            self._add(svc)

    # -- building ----------------------------------------------------------------------

    def _deps(self) -> ServiceDeps:
        deps = ServiceDeps(
            http=self.http,
            registry=self.registry,
            log_dir=self.log_dir,
            policy=lambda: self.config.policy,
            start_gate=self.gate.starting,
            listeners=self.listeners,
            cuda_devices=self.gpu_hooks.cuda_devices,
            wait_released=self.gpu_hooks.wait_released,
            start_history=self.start_history,
        )
        return deps

    def _add(self, svc: ServiceConfig) -> Service:
        service = Service(svc, self._deps())
        self.services[svc.name] = service
        return service

    def get(self, name: str) -> Service:
        try:
            return self.services[name]
        except KeyError:
            raise UnknownServiceError(name) from None

    # -- lifecycle ---------------------------------------------------------------------

    async def start_boot_services(self, held: Collection[str] = ()) -> None:
        """Launch every boot service without waiting; the gate serializes each GPU.

        ``held``: boot services the previous program of an upgrade had stopped (operator stop,
        fatal); an upgrade must not start them behind the operator's back."""
        for service in self.services.values():
            if service.config.spec.start == "boot" and service.name not in held:
                await service.start(wait=False)

    def held(self) -> list[str]:
        """Boot services that are down on purpose (stopped or fatal), for an upgrade."""
        return sorted(
            name for name, s in self.services.items()
            if s.config.spec.start == "boot" and str(s.state) in ("stopped", "fatal")
        )  # fmt: skip

    async def shutdown(self, deadline: float) -> None:
        """Stop every service concurrently; whatever outlives the deadline is killed."""
        stops = [asyncio.create_task(s.stop("shutdown")) for s in self.services.values()]
        if stops:
            done, pending = await asyncio.wait(stops, timeout=deadline)
            for task in pending:
                task.cancel()
            for task in done:
                if task.exception() is not None:
                    log.error("shutdown.stop_failed", error=repr(task.exception()))
        # Backstop: anything still carrying our marker is killed, whatever state it is in.
        marked = await find_marked_async(self.registry.marker_prefix, prefix=True)
        leftovers = kill_refs(marked)
        if leftovers:
            log.warning("shutdown.killed_leftovers", pids=sorted(r.pid for r in leftovers))
        for service in self.services.values():
            self.registry.forget(service.name)

    async def detach_all(self) -> None:
        """Stop supervising every service, leaving its engine running (before an upgrade)."""
        await asyncio.gather(*(s.detach() for s in self.services.values()))

    async def add_service(self, svc: ServiceConfig) -> Service:
        service = self._add(svc)
        if svc.spec.start == "boot":
            await service.start(wait=False)
        return service

    async def remove_service(self, name: str) -> None:
        service = self.services.pop(name)
        await service.stop("removed")

    async def aclose(self) -> None:
        """Release the probe connections (after shutdown)."""
        await self.http.close()

    # -- requests from the control API ---------------------------------------------------

    def log_tail(self, name: str, lines: int, since: float | None) -> list[LogLine]:
        return self.get(name).ring.tail(lines, since)

    def follow_logs(self, name: str) -> AsyncIterator[LogLine]:
        return self.get(name).ring.follow()

    def services_status(self) -> dict[str, dict[str, Any]]:
        return {name: s.snapshot() for name, s in sorted(self.services.items())}
