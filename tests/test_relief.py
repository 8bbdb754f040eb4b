"""Critical pressure unloads idle, non-pinned Ollama models on that GPU, LRU first."""

from __future__ import annotations

import contextlib
from typing import Any

from llm_supervisor.config.models import Config, ServiceConfig, ServiceSpec
from llm_supervisor.gateway.app import Gateway
from llm_supervisor.gateway.relief import relieve
from llm_supervisor.gpu.pressure import PressureEvent

GIB = 2**30


class Backend:
    def __init__(self, config: Config) -> None:
        self._config = config

    def config(self) -> Config:
        return self._config

    def lease(self, service: str) -> Any:
        return contextlib.nullcontext()

    async def ensure_ready(self, service: str) -> None: ...
    async def stop_if_idle(self, service: str, idle_for: float) -> bool:
        return False

    def usage(self, service: str) -> None:
        return None


class RecordingClient:
    def __init__(self) -> None:
        self.posts: list[tuple[int, dict[str, Any]]] = []

    async def post_json(self, up: Any, path: str, payload: Any, timeout: float) -> Any:
        self.posts.append((up.port, payload))
        return {}


async def test_critical_pressure_unloads_lru_idle_unpinned() -> None:
    spec = ServiceSpec(engine="ollama", port=11435, models=("big:1", "a:1", "b:1", "busy:1"))
    config = Config(
        services={"ollama": ServiceConfig(name="ollama", spec=spec, gpus=(1,), source="t")},
        policy={"pin": ["big:1"], "pressure": {"warning": 0.8, "critical": 0.95}},  # type: ignore[arg-type]
    )
    gateway = Gateway(Backend(config))
    client = RecordingClient()
    gateway.client = client  # type: ignore[assignment]
    gateway.state.ps["ollama"] = [
        {"name": "big:1", "size_vram": 60 * GIB},
        {"name": "a:1", "size_vram": 4 * GIB},
        {"name": "b:1", "size_vram": 4 * GIB},
        {"name": "busy:1", "size_vram": 8 * GIB},
    ]
    gateway.state.model_last_request.update({"a:1": 20.0, "b:1": 10.0})
    gateway.state.models_in_flight["busy:1"] = 1
    event = PressureEvent(1, "GPU-x", "warning", "critical", int(77 * GIB), 80 * GIB)
    unloaded = await relieve(gateway.state, gateway.client, config, event)
    # 77 GiB used, warning at 64 GiB: 13 GiB to free; only a and b are idle and unpinned.
    assert unloaded == ["b:1", "a:1"]
    assert client.posts == [
        (11435, {"model": "b:1", "keep_alive": 0}),
        (11435, {"model": "a:1", "keep_alive": 0}),
    ]
