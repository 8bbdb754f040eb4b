"""Ollama's server (``ollama serve``)."""

from __future__ import annotations

from ..config.modelnames import same_model
from ..config.models import Policy, ServiceConfig
from ..durations import to_ollama_keep_alive
from .base import WARMUP_PROMPT, Prober, base_url, flags, http_ok, http_post_ok


class OllamaEngine:
    kind = "ollama"
    stop_timeout = 10.0
    startup_timeout = 120.0

    def argv(self, svc: ServiceConfig) -> list[str]:
        return [*(svc.spec.command or ("ollama", "serve")), *flags(svc.spec.args)]

    def env(self, svc: ServiceConfig, policy: Policy) -> dict[str, str]:
        # The gateway enforces keep_alive per request; this default covers requests that
        # reach Ollama without it (local scripts bypassing the gateway).
        keep_alive = to_ollama_keep_alive(policy.keep_alive.default)
        env = {
            "OLLAMA_HOST": f"127.0.0.1:{svc.spec.port}",
            # envconfig reads a Go duration or whole seconds; negative means forever.
            "OLLAMA_KEEP_ALIVE": str(keep_alive) if keep_alive == -1 else _go_duration(keep_alive),
        }
        num_ctx = policy.ollama_options.get("num_ctx")
        if isinstance(num_ctx, int) and not isinstance(num_ctx, bool):
            # OpenAI-style /v1 requests carry no options: without the same context length
            # as the pinned load, each one would make Ollama reload the model.
            env["OLLAMA_CONTEXT_LENGTH"] = str(num_ctx)
        return env

    async def ready(self, client: Prober, svc: ServiceConfig, timeout: float) -> bool:
        return await http_ok(client, f"{base_url(svc)}/api/version", timeout) is not None

    async def live(self, client: Prober, svc: ServiceConfig, timeout: float) -> bool:
        return await self.ready(client, svc, timeout)

    async def warmup(
        self, client: Prober, svc: ServiceConfig, policy: Policy, timeout: float
    ) -> bool | None:
        """Load each of the policy's warm-up models this server offers and ask for one token,
        with the forced options (a different num_ctx would make the next request reload)."""
        models = [m for m in policy.warmup if any(same_model(m, o) for o in svc.spec.models)]
        if not models:
            return None
        options = {**policy.ollama_options, "num_predict": 1}
        ok = True
        for model in models:
            payload = {"model": model, "prompt": WARMUP_PROMPT, "stream": False, "options": options}
            ok &= await http_post_ok(client, f"{base_url(svc)}/api/generate", payload, timeout)
        return ok


def _go_duration(value: int | str) -> str:
    return f"{value}s" if isinstance(value, int) else value
