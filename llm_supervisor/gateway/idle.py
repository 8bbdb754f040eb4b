"""vLLM idle policy: a vLLM service whose keep_alive is not forever stops after that long
without requests, and starts again on the next request (the gateway calls ensure_ready).

The policy decides how long (``service_keep_alive``); the Service decides whether it is idle
(``stop_if_idle``, under its own lock, so a request that just arrived keeps it running).
"""

from __future__ import annotations

import asyncio
import math

from ..config.models import Policy, ServiceSpec
from ..errors import SupervisorError
from ..logsetup import get_logger
from .backend import GatewayBackend
from .keepalive import rule_for

log = get_logger(__name__)


def service_keep_alive(spec: ServiceSpec, policy: Policy) -> tuple[str, float]:
    """A vLLM service's keep_alive: policy rules (and pins) by served name, else default."""
    return rule_for(spec.public_name or "", policy)


def idle_deadline(idle_since: float | None, keep_alive: float) -> float | None:
    if idle_since is None or math.isinf(keep_alive):
        return None
    return idle_since + keep_alive


class IdleWatcher:
    """Asks every vLLM service with a finite keep_alive to stop if idle, every ``interval``."""

    def __init__(self, backend: GatewayBackend, interval: float = 10.0) -> None:
        self.backend = backend
        self.interval = interval

    async def check_once(self) -> list[str]:
        config = self.backend.config()
        stopped = []
        for name, svc in config.services.items():
            _, keep_alive = service_keep_alive(svc.spec, config.policy)
            if svc.spec.engine != "vllm" or math.isinf(keep_alive):
                continue
            try:
                if not await self.backend.stop_if_idle(name, keep_alive):
                    continue
            except SupervisorError as exc:
                log.warning("service.idle_stop_failed", service=name, error=str(exc))
                continue
            log.info("service.idle_stop", service=name, keep_alive=keep_alive)
            stopped.append(name)
        return stopped

    async def run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self.interval)
