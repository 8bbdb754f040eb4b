"""Any OpenAI-compatible server started from an explicit argv."""

from __future__ import annotations

from ..config.models import Policy, ServiceConfig
from .base import Prober, auth_headers, base_url, flags, http_ok, openai_warmup


class CommandEngine:
    kind = "command"
    stop_timeout = 10.0
    startup_timeout = 120.0

    def argv(self, svc: ServiceConfig) -> list[str]:
        return [*(svc.spec.command or ()), *flags(svc.spec.args)]

    def env(self, svc: ServiceConfig, policy: Policy) -> dict[str, str]:
        return {"PORT": str(svc.spec.port)}

    def _url(self, svc: ServiceConfig) -> str:
        return f"{base_url(svc)}{svc.spec.health.ready_path or '/v1/models'}"

    async def ready(self, client: Prober, svc: ServiceConfig, timeout: float) -> bool:
        return await http_ok(client, self._url(svc), timeout, auth_headers(svc.spec)) is not None

    async def live(self, client: Prober, svc: ServiceConfig, timeout: float) -> bool:
        return await self.ready(client, svc, timeout)

    async def warmup(
        self, client: Prober, svc: ServiceConfig, policy: Policy, timeout: float
    ) -> bool | None:
        return await openai_warmup(client, svc, timeout)
