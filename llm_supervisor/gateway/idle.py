"""vLLM idle policy: a vLLM service whose keep_alive is not forever stops after that long
without requests, and starts again on the next request (the gateway calls ensure_ready)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..config.models import Config, Policy, ServiceSpec
from ..errors import SupervisorError
from ..logsetup import get_logger
from .keepalive import rule_for

if TYPE_CHECKING:
    from .models_view import PolicyState

log = get_logger(__name__)


def service_keep_alive(spec: ServiceSpec, policy: Policy) -> tuple[str, float]:
    """A vLLM service's keep_alive: policy rules (and pins) by served name, else default."""
    return rule_for(spec.public_name or "", policy)


def idle_deadline(last_request: float | None, keep_alive: float) -> float | None:
    if last_request is None or math.isinf(keep_alive):
        return None
    return last_request + keep_alive


def idle_decisions(
    last_request: Mapping[str, float],
    now: float,
    config: Config,
    busy: frozenset[str] = frozenset(),
) -> list[str]:
    """Services to stop now: vLLM, not busy, keep_alive finite and elapsed since last use.
    A service without a recorded last request is left alone (never used, or already stopped)."""
    stop = []
    for name, svc in config.services.items():
        if svc.spec.engine != "vllm" or name in busy:
            continue
        _, keep_alive = service_keep_alive(svc.spec, config.policy)
        deadline = idle_deadline(last_request.get(name), keep_alive)
        if deadline is not None and now >= deadline:
            stop.append(name)
    return stop


class IdleWatcher:
    """Executes idle_decisions every ``interval`` seconds."""

    def __init__(self, state: PolicyState, interval: float = 10.0) -> None:
        self.state = state
        self.interval = interval

    def _seed(self, config: Config, now: float) -> None:
        """Boot services count as used at the gateway's start; on-demand ones as stopped."""
        for name, svc in config.services.items():
            known = name in self.state.last_request or name in self.state.idle_stopped
            if svc.spec.engine != "vllm" or known:
                continue
            if svc.spec.start == "boot":
                self.state.last_request[name] = now
            else:
                self.state.idle_stopped.add(name)

    async def check_once(self) -> list[str]:
        config = self.state.backend.config()
        now = self.state.clock()
        self._seed(config, now)
        stops = idle_decisions(self.state.last_request, now, config, self.state.busy_services())
        for name in stops:
            last = self.state.last_request.pop(name)
            self.state.idle_stopped.add(name)
            log.info("service.idle_stop", service=name, idle_seconds=round(now - last, 1))
            try:
                await self.state.backend.stop_idle(name)
            except SupervisorError as exc:
                log.warning("service.idle_stop_failed", service=name, error=str(exc))
        return stops

    async def run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self.interval)
