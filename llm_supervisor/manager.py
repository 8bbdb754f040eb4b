"""Manager: the set of services built from the config, and the requests made of them."""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from .config.models import Config, ServiceConfig
from .errors import UnknownServiceError
from .gate import StartGate
from .logsetup import get_logger
from .process.output import LogLine
from .process.registry import GroupRegistry
from .process.tree import find_marked, kill_refs
from .service.deps import ServiceDeps, StateListener
from .service.service import Service

log = get_logger(__name__)


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()  # shared: one per client costs ~0.8 MB each


def _probe_client() -> httpx.AsyncClient:
    """A client per service for its probes.

    httpx's pool scans every connection it holds on each request, so one client shared by
    64 services with 1 s probes cost ~27 % of a core (and its default of 20 kept-alive
    connections made the rest reconnect each time); one client per service: ~7 %.
    """
    return httpx.AsyncClient(verify=_tls())


class Manager:
    def __init__(
        self,
        config: Config,
        *,
        registry: GroupRegistry,
        log_dir: Path | None,
        http: httpx.AsyncClient | None = None,
        gate: StartGate | None = None,
        deps_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.log_dir = log_dir
        self._shared_http = http is not None  # tests inject one client for every service
        self.http = http or httpx.AsyncClient()
        self.gate = gate or StartGate()
        self.listeners: list[StateListener] = []
        self._deps_overrides = deps_overrides or {}
        self.services: dict[str, Service] = {}
        for svc in config.services.values():
            self._add(svc)

    # -- building ----------------------------------------------------------------------

    def _deps(self) -> ServiceDeps:
        deps = ServiceDeps(
            http=self.http if self._shared_http else _probe_client(),
            registry=self.registry,
            log_dir=self.log_dir,
            policy=lambda: self.config.policy,
            start_gate=self.gate.starting,
            listeners=self.listeners,
        )
        for key, value in self._deps_overrides.items():
            setattr(deps, key, value)
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

    async def start_boot_services(self) -> None:
        """Launch every boot service without waiting; the gate serializes each GPU."""
        for service in self.services.values():
            if service.config.spec.start == "boot":
                await service.start(wait=False)

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
        leftovers = kill_refs(find_marked(self.registry.marker_prefix, prefix=True))
        if leftovers:
            log.warning("shutdown.killed_leftovers", pids=sorted(r.pid for r in leftovers))
        for service in self.services.values():
            self.registry.forget(service.name)
            await self._close_http(service)

    async def add_service(self, svc: ServiceConfig) -> Service:
        service = self._add(svc)
        if svc.spec.start == "boot":
            await service.start(wait=False)
        return service

    async def remove_service(self, name: str) -> None:
        service = self.services.pop(name)
        await service.stop("removed")
        await self._close_http(service)

    async def _close_http(self, service: Service) -> None:
        if not self._shared_http:
            await service.deps.http.aclose()

    # -- requests from the gateway and the control API -----------------------------------

    async def ensure_ready(self, name: str, timeout: float | None = None) -> None:
        await self.get(name).ensure_ready(timeout)

    def note_request(self, name: str, now: Callable[[], float] | None = None) -> None:
        service = self.services.get(name)
        if service is not None:
            service.last_request = (now or service.deps.clock)()

    def log_tail(self, name: str, lines: int, since: float | None) -> list[LogLine]:
        return self.get(name).ring.tail(lines, since)

    def follow_logs(self, name: str) -> AsyncIterator[LogLine]:
        return self.get(name).ring.follow()

    def services_status(self) -> dict[str, dict[str, Any]]:
        return {name: s.snapshot() for name, s in sorted(self.services.items())}
