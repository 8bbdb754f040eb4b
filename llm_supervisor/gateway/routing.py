"""Which engine serves a model name: pure lookups over the current config."""

from __future__ import annotations

from typing import Any

from ..config.models import Config, ServiceConfig
from .backend import Upstream
from .keepalive import canonical_model

OPENAI_ENGINES = ("vllm", "command")


def upstream_of(svc: ServiceConfig) -> Upstream:
    return Upstream(svc.name, svc.spec.engine, svc.spec.port)


def ollama_services(config: Config) -> list[Upstream]:
    return [upstream_of(s) for s in config.services.values() if s.spec.engine == "ollama"]


def ollama_listing(config: Config, model: str) -> Upstream | None:
    """The Ollama service whose ``models`` lists the model (``:latest`` implied)."""
    wanted = canonical_model(model)
    for svc in config.services.values():
        if svc.spec.engine == "ollama" and wanted in map(canonical_model, svc.spec.models):
            return upstream_of(svc)
    return None


def ollama_for(config: Config, model: str | None) -> Upstream | None:
    """Native /api/* routes: the service listing the model, else the first Ollama service."""
    found = ollama_listing(config, model) if model else None
    if found:
        return found
    services = ollama_services(config)
    return services[0] if services else None


def openai_route(config: Config, model: str) -> Upstream | None:
    """/v1/*: a vLLM/command service serving that name, else an Ollama service listing it."""
    for svc in config.services.values():
        if svc.spec.engine in OPENAI_ENGINES and svc.spec.public_name == model:
            return upstream_of(svc)
    return ollama_listing(config, model)


def openai_model_list(config: Config, created: int = 0) -> dict[str, Any]:
    """``/v1/models``: everything the gateway can route to, in OpenAI's shape."""
    data: list[dict[str, Any]] = []
    seen: set[str] = set()
    for svc in config.services.values():
        names = svc.spec.models if svc.spec.engine == "ollama" else (svc.spec.public_name or "",)
        for name in names:
            if name and name not in seen:
                seen.add(name)
                data.append(
                    {"id": name, "object": "model", "created": created, "owned_by": svc.name}
                )
    return {"object": "list", "data": data}
