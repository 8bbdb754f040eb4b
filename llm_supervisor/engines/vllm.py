"""vLLM's OpenAI-compatible server."""

from __future__ import annotations

import json

from ..config.models import Policy, ServiceConfig
from .base import Prober, auth_headers, base_url, flags, http_ok, openai_warmup


class VllmEngine:
    kind = "vllm"
    stop_timeout = 30.0
    startup_timeout = 20 * 60.0  # big models take many minutes to load and compile

    def argv(self, svc: ServiceConfig) -> list[str]:
        spec = svc.spec
        command = list(spec.command or ("vllm", "serve"))
        return [
            *command,
            "--model", str(spec.model),
            "--served-model-name", str(spec.public_name),
            "--host", "127.0.0.1",
            "--port", str(spec.port),
            *flags(spec.args),
        ]  # fmt: skip

    def env(self, svc: ServiceConfig, policy: Policy) -> dict[str, str]:
        return {"PYTHONUNBUFFERED": "1"}

    async def ready(self, client: Prober, svc: ServiceConfig, timeout: float) -> bool:
        # /health answers before the model can serve; /v1/models listing our name is ready.
        # With --api-key, vLLM answers /v1/* only to that key (/health stays open).
        url = f"{base_url(svc)}/v1/models"
        body = await http_ok(client, url, timeout, auth_headers(svc.spec))
        if body is None:
            return False
        try:
            names = {m.get("id") for m in json.loads(body).get("data", [])}
        except (ValueError, AttributeError):
            return False
        return svc.spec.public_name in names

    async def live(self, client: Prober, svc: ServiceConfig, timeout: float) -> bool:
        return await http_ok(client, f"{base_url(svc)}/health", timeout) is not None

    async def warmup(
        self, client: Prober, svc: ServiceConfig, policy: Policy, timeout: float
    ) -> bool | None:
        return await openai_warmup(client, svc, timeout)
