"""Shared fixtures: fake engine services, a manager on a temporary state dir, cleanup."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from llm_supervisor.config.models import Config, ServiceConfig, ServiceSpec
from llm_supervisor.process.registry import GroupRegistry
from llm_supervisor.process.tree import find_marked, kill_refs
from llm_supervisor.service.deps import GpuHooks
from llm_supervisor.service.manager import Manager

from .daemon_harness import free_port  # one source of ports: never the same one twice

FAKES = Path(__file__).parent / "fakes"
FAKE_ENGINE = str(FAKES / "fake_engine.py")


def fake_service(name: str, *flags: str, engine: str = "vllm", **spec: Any) -> ServiceConfig:
    """A service running tests/fakes/fake_engine.py with the given misbehaviour flags."""
    port = spec.pop("port", None) or free_port()
    mode = "ollama" if engine == "ollama" else "vllm"
    command = [sys.executable, FAKE_ENGINE, "--mode", mode, *flags]
    if engine == "ollama":
        command += ["--port", str(port)]
    health = {"interval": 0.6, "timeout": 0.5, "failures": 2, "startup_timeout": 10.0}
    health.update(spec.pop("health", {}))
    restart = {"backoff_initial": 0.05, "backoff_max": 0.2, "max_failures": 5, "window": 60}
    restart.update(spec.pop("restart", {}))
    data: dict[str, Any] = {
        "engine": engine, "port": port, "command": command, "health": health,
        "restart": restart, "stop_timeout": spec.pop("stop_timeout", 2.0),
    }  # fmt: skip
    if engine == "vllm":
        data["model"] = spec.pop("model", name)
    data.update(spec)
    return ServiceConfig(name=name, spec=ServiceSpec.model_validate(data), gpus=(), source="test")


def make_config(*services: ServiceConfig, **policy: Any) -> Config:
    return Config.model_validate(
        {"services": {s.name: s for s in services}, "policy": policy or {}}
    )


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """In-process CLI calls configure structlog globally; no test inherits another's set-up."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    path.mkdir()
    yield path
    # Teardown: nothing a test started may outlive it.
    kill_refs(find_marked(f"{path.resolve()}::", prefix=True))


@pytest.fixture
async def manager_factory(state_dir: Path, tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Manager] = []

    def make(*services: ServiceConfig, gpu_hooks: GpuHooks | None = None) -> Manager:
        manager = Manager(
            make_config(*services),
            registry=GroupRegistry(state_dir),
            log_dir=tmp_path / "logs",
            gpu_hooks=gpu_hooks,
        )
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await manager.shutdown(deadline=5.0)
        await manager.aclose()
