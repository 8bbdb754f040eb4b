"""Which engine the gateway sends a model to, and that the lookup tables follow reloads."""

from __future__ import annotations

from typing import Any

from llm_supervisor.config.models import Config
from llm_supervisor.gateway.backend import Upstream
from llm_supervisor.gateway.routing import routes_for


def config(**services: dict[str, Any]) -> Config:
    entries = {
        name: {"name": name, "gpus": (), "source": "t", "spec": spec}
        for name, spec in services.items()
    }
    return Config.model_validate({"services": entries})


def ollama(port: int, *models: str) -> dict[str, Any]:
    return {"engine": "ollama", "port": port, "models": list(models)}


def vllm(port: int, model: str, served: str | None = None) -> dict[str, Any]:
    return {"engine": "vllm", "port": port, "model": model, "served_name": served}


def test_ollama_names_match_with_and_without_latest() -> None:
    routes = routes_for(config(a=ollama(9001, "llama3.2"), b=ollama(9002, "qwen3:8b")))
    assert routes.ollama_for("llama3.2:latest") == Upstream("a", "ollama", 9001)
    assert routes.ollama_for("qwen3:8b") == Upstream("b", "ollama", 9002)
    # Unlisted models and model-less routes (/api/version) go to the first Ollama service.
    assert routes.ollama_for("mistral") == Upstream("a", "ollama", 9001)
    assert routes.ollama_for(None) == Upstream("a", "ollama", 9001)


def test_openai_prefers_the_vllm_service_then_an_ollama_lister() -> None:
    routes = routes_for(
        config(q=vllm(9003, "Qwen/Qwen3-8B", "qwen3"), o=ollama(9001, "qwen3", "llama3.2"))
    )
    assert routes.openai_route("qwen3") == Upstream("q", "vllm", 9003, "qwen3")
    assert routes.openai_route("llama3.2") == Upstream("o", "ollama", 9001)
    assert routes.openai_route("Qwen/Qwen3-8B") is None  # clients ask for the served name
    assert routes.openai_route("unknown") is None


def test_no_ollama_service_routes_nothing_native() -> None:
    assert routes_for(config(q=vllm(9003, "m"))).ollama_for(None) is None


def test_a_new_config_gets_new_tables() -> None:
    first = config(a=ollama(9001, "llama3.2"))
    assert routes_for(first).ollama_for("llama3.2") == Upstream("a", "ollama", 9001)
    reloaded = config(a=ollama(9005, "llama3.2"))
    assert routes_for(reloaded).ollama_for("llama3.2") == Upstream("a", "ollama", 9005)
    assert routes_for(reloaded) is routes_for(reloaded)  # built once per config


def test_names_match_the_ollama_way_case_and_latest() -> None:
    routes = routes_for(config(q=vllm(9003, "m", "Qwen3"), o=ollama(9001, "Llama3.2")))
    assert routes.ollama_for("LLAMA3.2:LATEST") == Upstream("o", "ollama", 9001)
    # The upstream carries the exact served name: the gateway rewrites the body to it.
    assert routes.openai_route("qwen3") == Upstream("q", "vllm", 9003, "Qwen3")
    assert routes.known_models == {"qwen3:latest": "Qwen3", "llama3.2:latest": "Llama3.2"}


def test_an_engine_key_travels_with_its_upstream_but_is_never_printed() -> None:
    spec = {**vllm(9003, "m"), "args": {"api-key": "sk-engine-secret"}}
    up = routes_for(config(q=spec)).openai_route("m")
    assert up is not None and up.api_key == "sk-engine-secret"
    assert "sk-engine" not in repr(up)
