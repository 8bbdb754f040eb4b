"""The daemon's GPU side: CUDA_VISIBLE_DEVICES, admission before a start, memory release
after a stop, and the pressure loop. Decisions are the pure functions in ``gpu/``; this
module only gathers their inputs and carries out their answers. An eviction is carried out
by asking each chosen service to stop if it is still idle: the service decides, under its
own lock, so a request that arrived after the decision keeps it running.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..config.models import Config, Policy, ServiceConfig
from ..config.vllmargs import respell
from ..errors import AdmissionError
from ..logsetup import get_logger
from ..service.service import Service
from .admission import Admit, Evict, EvictionCandidate, decide_admission, need_for
from .attribution import attribute, process_names, service_usage, snapshot_dict
from .nvml import GpuMonitor
from .pressure import PressureEvent, PressureTracker
from .snapshot import GpuDevice, GpuSnapshot

log = get_logger(__name__)

RELEASE_WAIT = 30.0  # after a stop, how long a start on that GPU waits for memory to return
EVICTION_ROUNDS = 2


async def _ignore(_: PressureEvent) -> None:
    return None


@dataclass(frozen=True)
class PlacementHooks:
    """What placement asks of the daemon, at each use (a reload swaps services and policy)."""

    services: Callable[[], Mapping[str, Service]] = dict
    policy: Callable[[], Policy] = Policy
    # Called for each GPU that enters critical pressure (the daemon unloads Ollama models).
    on_critical: Callable[[PressureEvent], Awaitable[object]] = _ignore


class Placement:
    def __init__(
        self,
        monitor: GpuMonitor,
        hooks: PlacementHooks | None = None,
        *,
        release_wait: float = RELEASE_WAIT,
    ) -> None:
        self.monitor = monitor
        self.hooks = hooks or PlacementHooks()
        self.release_wait = release_wait
        self.pressure = PressureTracker()
        self.last: GpuSnapshot | None = None

    async def refresh(self) -> GpuSnapshot:
        self.last = await self.monitor.snapshot()
        return self.last

    def totals(self) -> dict[int | str, int] | None:
        return self.last.totals() if self.last is not None else None

    # -- hooks for Service -------------------------------------------------------------

    def cuda_devices(self, svc: ServiceConfig) -> str | None:
        """UUIDs when NVML knows the GPUs (indices can change order), else the indices."""
        if not svc.gpus:
            return None
        uuids = self.last.uuids_for(svc.gpus) if self.last and self.last.available else None
        return ",".join(uuids) if uuids else ",".join(str(g) for g in svc.gpus)

    async def admit(self, service: ServiceConfig) -> None:
        """Enough free memory on every GPU of the service, evicting idle services if allowed."""
        if not service.gpus:
            return
        for _ in range(EVICTION_ROUNDS + 1):
            snap = await self.refresh()
            if not snap.available:
                return  # nothing can be known; the engine's own check is the last word
            verdict = self._verdict(service, snap)
            if isinstance(verdict, Admit):
                return
            if not isinstance(verdict, Evict):
                hint = "stop a service on that GPU or lower gpu-memory-utilization"
                raise AdmissionError(
                    service.name, verdict.message, cause="insufficient_free_memory",
                    hint=respell(hint, service.spec.args),  # as the profile spells it
                )  # fmt: skip
            await self._evict(service, verdict)
        raise AdmissionError(service.name, "GPU memory still short after evicting idle services")

    def _verdict(self, service: ServiceConfig, snap: GpuSnapshot) -> Any:
        for ref in service.gpus:
            device = snap.resolve(ref)
            if device is None:
                raise AdmissionError(service.name, f"GPU {ref} not found", cause="unknown")
            need = need_for(service.spec, device.memory_total)
            candidates = self._candidates(service.name, device, snap)
            verdict = decide_admission(
                need, device, candidates, self.hooks.policy().evict_idle,
                process_names(device.pids()),
            )  # fmt: skip
            if not isinstance(verdict, Admit):
                return verdict
        return Admit()

    def _candidates(
        self, starting: str, device: GpuDevice, snap: GpuSnapshot
    ) -> list[EvictionCandidate]:
        services, policy = self.hooks.services(), self.hooks.policy()
        pids = {n: set(s.tree_pids()) for n, s in services.items()}
        usage = service_usage(attribute(snap, pids)).get(device.index, {})
        found = []
        for name, other in services.items():
            if name == starting or not _on_device(other.config, device) or not pids[name]:
                continue
            found.append(
                EvictionCandidate(
                    service=name,
                    idle_since=other.usage().idle_since,
                    pinned=any(policy.is_pinned(m) for m in _models(other.config)),
                    vram_bytes=usage.get(name, other.config.spec.vram),
                    pids=frozenset(pids[name]),
                )
            )
        return found

    async def _evict(self, starting: ServiceConfig, verdict: Evict) -> None:
        services = self.hooks.services()
        for name in verdict.services:
            other = services.get(name)
            if other is not None and await other.stop_if_idle(0.0, reason="evicted"):
                log.warning("gpu.evict", service=name, for_service=starting.name)
            else:  # in use since the decision (or gone): the next round decides again
                log.info("gpu.evict_skipped", service=name, for_service=starting.name)

    async def wait_released(self, service: ServiceConfig, pids: list[int]) -> None:
        if not service.gpus or not pids:
            return
        started = time.monotonic()
        if not await self.monitor.wait_released(pids, self.release_wait, interval=0.25):
            log.warning("gpu.memory_not_released", service=service.name, pids=pids)
        elif time.monotonic() - started > 0.5:
            log.info("gpu.memory_released", service=service.name,
                     waited=round(time.monotonic() - started, 2))  # fmt: skip

    # -- status and pressure -----------------------------------------------------------

    def status(self, config: Config) -> dict[str, Any]:
        snap = self.last
        if snap is None:
            return {"available": False, "reason": "not read yet", "message": "", "gpus": []}
        pids = {n: set(s.tree_pids()) for n, s in self.hooks.services().items()}
        all_pids = {p for d in snap.devices for p in d.pids()}
        return snapshot_dict(snap, pids, process_names(all_pids), self.pressure.levels)

    async def run(self, interval: float = 5.0) -> None:
        """Refresh telemetry and track pressure levels; events are logged on transitions."""
        while True:
            snap = await self.refresh()
            for event in self.pressure.update(snap, self.hooks.policy().pressure):
                if event.level == "critical":
                    await self.hooks.on_critical(event)
            await asyncio.sleep(interval)


def _on_device(svc: ServiceConfig, device: GpuDevice) -> bool:
    return any(ref in (device.index, device.uuid, str(device.index)) for ref in svc.gpus)


def _models(svc: ServiceConfig) -> set[str]:
    names = set(svc.spec.models)
    if svc.spec.public_name:
        names.add(svc.spec.public_name)
    return names
