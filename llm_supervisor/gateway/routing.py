"""Which engine serves a model name: pure lookups over the current config."""

from __future__ import annotations

from typing import Any

from ..config.modelnames import canonical_model_name
from ..config.models import Config, ServiceConfig
from ..engines.base import engine_api_key
from .backend import Upstream

_GLOB = frozenset("*?[")

OPENAI_ENGINES = ("vllm", "command")


def upstream_of(svc: ServiceConfig) -> Upstream:
    served = svc.spec.public_name if svc.spec.engine in OPENAI_ENGINES else None
    return Upstream(svc.name, svc.spec.engine, svc.spec.port, served, engine_api_key(svc.spec))


class Routes:
    """Every routing lookup for one Config, computed once.

    A Config is immutable and replaced whole on reload, so the tables stay right for as
    long as that Config is current, and a request costs two dict lookups instead of a scan
    over every service and model name.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ollama: tuple[Upstream, ...] = ()
        self._listing: dict[str, Upstream] = {}  # canonical model name → first lister
        self._openai: dict[str, Upstream] = {}  # vLLM/command public name → service
        self._openai_folded: dict[str, Upstream] = {}  # the same, by canonical name
        for svc in config.services.values():
            up = upstream_of(svc)
            if svc.spec.engine == "ollama":
                self.ollama += (up,)
                for name in svc.spec.models:
                    self._listing.setdefault(canonical_model_name(name), up)
            elif svc.spec.engine in OPENAI_ENGINES and svc.spec.public_name:
                self._openai.setdefault(svc.spec.public_name, up)
                self._openai_folded.setdefault(canonical_model_name(svc.spec.public_name), up)
        self.known_models = _known_models(config)

    def ollama_listing(self, model: str) -> Upstream | None:
        """The Ollama service whose ``models`` lists the model (``:latest`` implied)."""
        return self._listing.get(canonical_model_name(model))

    def ollama_for(self, model: str | None) -> Upstream | None:
        """Native /api/* routes: the service listing the model, else the first Ollama one."""
        found = self.ollama_listing(model) if model else None
        return found or (self.ollama[0] if self.ollama else None)

    def openai_route(self, model: str) -> Upstream | None:
        """/v1/*: a vLLM/command service serving that name (exactly, else the Ollama way),
        else an Ollama one listing it."""
        return (
            self._openai.get(model)
            or self._openai_folded.get(canonical_model_name(model))
            or self.ollama_listing(model)
        )


def _known_models(config: Config) -> dict[str, str]:
    """Every model name the config spells out (not globs): the only ones metrics label."""
    policy = config.policy
    names: list[str] = [*policy.pin, *policy.focus, *(r.match for r in policy.keep_alive.rules)]
    for svc in config.services.values():
        names += svc.spec.models if svc.spec.engine == "ollama" else [svc.spec.public_name or ""]
    return {canonical_model_name(n): n for n in reversed(names) if n and not _GLOB & set(n)}


_current: list[Routes] = []  # one slot: the daemon has one current Config at a time


def routes_for(config: Config) -> Routes:
    if not _current or _current[0].config is not config:
        _current[:] = [Routes(config)]
    return _current[0]


def ollama_services(config: Config) -> list[Upstream]:
    return list(routes_for(config).ollama)


def ollama_listing(config: Config, model: str) -> Upstream | None:
    return routes_for(config).ollama_listing(model)


def ollama_for(config: Config, model: str | None) -> Upstream | None:
    return routes_for(config).ollama_for(model)


def openai_route(config: Config, model: str) -> Upstream | None:
    return routes_for(config).openai_route(model)


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
