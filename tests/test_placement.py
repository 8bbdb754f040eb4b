"""GPU placement in the supervision core, with the fake NVML backend and fake engines."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from llm_supervisor.config.models import Config, ServiceConfig
from llm_supervisor.errors import StartFailedError
from llm_supervisor.gpu.fake import FakeDevice, FakeNvmlBackend
from llm_supervisor.gpu.nvml import GpuMonitor
from llm_supervisor.gpu.placement import Placement, PlacementHooks
from llm_supervisor.process.registry import GroupRegistry
from llm_supervisor.service.deps import GpuHooks
from llm_supervisor.service.gate import StartGate
from llm_supervisor.service.manager import Manager
from llm_supervisor.service.states import State

from .conftest import fake_service

GIB = 2**30
UUID = "GPU-11111111-2222-3333-4444-555555555555"
pytestmark = pytest.mark.timeout(60)


class LiveGpu(FakeNvmlBackend):
    """One 80 GiB GPU whose processes are the live services with their declared budget."""

    def __init__(self) -> None:
        super().__init__([FakeDevice(uuid=UUID, total=80 * GIB)])
        self.manager: Manager | None = None

    def processes(self, index: int) -> list[tuple[int, int | None]]:
        assert self.manager is not None
        return [
            (s.pid, s.config.spec.vram)
            for s in self.manager.services.values()
            if s.pid is not None and s.config.spec.vram
        ]

    def memory(self, index: int) -> tuple[int, int, int]:
        used = sum(m or 0 for _, m in self.processes(index))
        return 80 * GIB, used, 80 * GIB - used


def on_gpu0(svc: ServiceConfig, vram_gib: int) -> ServiceConfig:
    """On GPU 0, claiming ``vram_gib`` (vLLM: as gpu-memory-utilization of the 80 GiB)."""
    args = {**svc.spec.args, "gpu-memory-utilization": vram_gib / 80}
    spec = svc.spec.model_copy(update={"vram": vram_gib * GIB, "args": args})
    return svc.model_copy(update={"gpus": (0,), "spec": spec})


@pytest.fixture
async def placed(
    state_dir: Path, tmp_path: Path
) -> AsyncIterator[Callable[..., tuple[Manager, Placement]]]:
    made: list[Manager] = []

    def make(*services: ServiceConfig, **policy: Any) -> tuple[Manager, Placement]:
        gpu = LiveGpu()
        # As the daemon wires it: placement asks for the manager's services at each use.
        hooks = PlacementHooks(
            services=lambda: manager.services, policy=lambda: manager.config.policy
        )
        placement = Placement(GpuMonitor(gpu), hooks, release_wait=2.0)
        config = Config.model_validate(
            {"services": {s.name: s for s in services}, "policy": policy}
        )
        manager = Manager(
            config, registry=GroupRegistry(state_dir), log_dir=tmp_path / "logs",
            gate=StartGate(admit=placement.admit),
            gpu_hooks=GpuHooks(placement.cuda_devices, placement.wait_released),
        )  # fmt: skip
        gpu.manager = manager
        made.append(manager)
        return manager, placement

    yield make
    for manager in made:
        await manager.shutdown(5.0)
        await manager.aclose()


async def test_evicts_idle_service_lru(placed: Any) -> None:
    old = on_gpu0(fake_service("old"), 40)
    new = on_gpu0(fake_service("new"), 50)
    manager, _ = placed(old, new)
    await manager.get("old").start()
    await manager.get("new").start()
    assert manager.get("new").state is State.READY
    assert manager.get("old").state is State.STOPPED
    assert manager.get("old").reason == "evicted"


@pytest.mark.parametrize("pin", ["big-model", "Big-Model:latest"])  # one model, as Ollama says
async def test_refuses_with_numbers_when_holder_is_pinned(placed: Any, pin: str) -> None:
    pinned = on_gpu0(fake_service("big", model="big-model"), 40)
    new = on_gpu0(fake_service("new", restart={"max_failures": 1}), 50)
    manager, _ = placed(pinned, new, pin=[pin])
    await manager.get("big").start()
    with pytest.raises(StartFailedError) as info:
        await manager.get("new").start()
    assert info.value.cause == "insufficient_free_memory"
    message = manager.get("new").reason
    assert "GPU 0" in message and "51200 MiB" in message and "40960 MiB free" in message
    assert f"pid {manager.get('big').pid}" in message
    assert manager.get("big").state is State.READY


async def test_refusal_hint_spells_the_flag_as_the_profile_does(placed: Any) -> None:
    pinned = on_gpu0(fake_service("big", model="big-model"), 40)
    new = on_gpu0(fake_service("new", restart={"max_failures": 1}), 50)
    args = {"gpu_memory_utilization": new.spec.args["gpu-memory-utilization"]}
    new = new.model_copy(update={"spec": new.spec.model_copy(update={"args": args})})
    manager, _ = placed(pinned, new, pin=["big-model"])
    await manager.get("big").start()
    with pytest.raises(StartFailedError) as info:
        await manager.get("new").start()
    assert info.value.cause == "insufficient_free_memory"
    assert "51200 MiB" in manager.get("new").reason  # the budget read under either spelling
    assert info.value.hint.endswith("or lower gpu_memory_utilization")


async def test_cuda_visible_devices_uses_uuid(placed: Any) -> None:
    manager, placement = placed(on_gpu0(fake_service("a"), 10))
    await placement.refresh()
    assert placement.cuda_devices(manager.get("a").config) == UUID
    await manager.get("a").start()
    environ = Path(f"/proc/{manager.get('a').pid}/environ").read_bytes().split(b"\0")  # noqa: ASYNC240
    assert f"CUDA_VISIBLE_DEVICES={UUID}".encode() in environ
    assert not any(e.startswith(b"NOTIFY_SOCKET=") for e in environ)


async def test_starts_on_one_gpu_are_serialized(placed: Any) -> None:
    first = on_gpu0(fake_service("first", "--startup-delay", "0.5"), 10)
    second = on_gpu0(fake_service("second", "--startup-delay", "0.5"), 10)
    manager, _ = placed(first, second)
    spawned: dict[str, float] = {}
    ready: dict[str, float] = {}

    def record(service: str, old: State, new: State, reason: str) -> None:
        if new is State.READY:
            ready[service] = asyncio.get_running_loop().time()

    manager.listeners.append(record)
    await asyncio.gather(manager.get("first").start(), manager.get("second").start())
    for name in ("first", "second"):
        child_started = manager.get(name)._child.started_at  # type: ignore[union-attr]
        spawned[name] = child_started
    early, late = sorted(spawned, key=spawned.__getitem__)
    # The later engine was spawned only after the earlier one was ready.
    assert spawned[late] >= ready[early] - 0.01


async def test_eviction_spares_a_service_that_got_a_request_meanwhile(placed: Any) -> None:
    """Both idle services must go; while the first one's stop drags on, the second one gets
    a request. It keeps running (and serving), and the start that needed its memory fails."""
    first = on_gpu0(fake_service("first", "--ignore-term", stop_timeout=1.0), 40)
    second = on_gpu0(fake_service("second"), 40)
    new = on_gpu0(fake_service("new", restart={"max_failures": 1}), 50)
    manager, _ = placed(first, second, new)
    await manager.get("first").start()
    await manager.get("second").start()
    pid = manager.get("second").pid
    with contextlib.ExitStack() as requests:

        def request_for_second(service: str, old: State, new: State, reason: str) -> None:
            if service == "first" and new is State.STOPPING:
                requests.enter_context(manager.get("second").lease())  # the gateway's

        manager.listeners.append(request_for_second)
        with pytest.raises(StartFailedError) as info:
            await manager.get("new").start()
        assert manager.get("second").usage().in_flight == 1
    assert info.value.cause == "insufficient_free_memory"
    assert manager.get("first").state is State.STOPPED
    assert manager.get("second").state is State.READY and manager.get("second").pid == pid
