"""Service behaviour against real fake-engine subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import psutil
import pytest

from llm_supervisor.errors import StartFailedError
from llm_supervisor.service.states import State

from .conftest import fake_service

pytestmark = pytest.mark.timeout(60)


async def wait_state(service: Any, *states: State, timeout: float = 15.0) -> State:
    return await asyncio.wait_for(service._wait_for(lambda s: s in states), timeout)  # type: ignore[no-any-return]


async def test_ready_detection(manager_factory: Any) -> None:
    manager = manager_factory(fake_service("a", "--startup-delay", "0.3"))
    service = manager.get("a")
    await service.start()
    assert service.state is State.READY
    assert service.pid is not None and psutil.pid_exists(service.pid)


async def test_restart_after_kill_9(manager_factory: Any) -> None:
    manager = manager_factory(fake_service("a"))
    service = manager.get("a")
    await service.start()
    first = service.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await wait_state(service, State.BACKOFF, State.STARTING)
    await wait_state(service, State.READY)
    assert service.pid not in (None, first)
    assert service.restarts["crash"] == 1
    assert service.last_failure is not None and service.last_failure.status is not None
    assert service.last_failure.status.signal == signal.SIGKILL


async def test_restart_after_hung_health(manager_factory: Any) -> None:
    svc = fake_service("a", "--hang-after", "0.5", health={"timeout": 0.2, "failures": 2})
    manager = manager_factory(svc)
    service = manager.get("a")
    await service.start()
    first = service.pid
    await wait_state(service, State.BACKOFF, State.STARTING)
    assert service.last_failure is not None and service.last_failure.reason == "health"
    await wait_state(service, State.READY)
    assert service.pid != first
    assert first is not None and not psutil.pid_exists(first)


async def test_backoff_then_fatal(manager_factory: Any) -> None:
    svc = fake_service("a", "--fail-with", "boom: CUDA out of memory", restart={"max_failures": 3})
    manager = manager_factory(svc)
    service = manager.get("a")
    with pytest.raises(StartFailedError):
        await service.start()
    assert service.state is State.FATAL
    assert "3 failures" in service.reason
    assert service.restarts["crash"] == 2


async def test_start_clears_fatal(manager_factory: Any) -> None:
    svc = fake_service("a", "--exit-after", "0", restart={"max_failures": 1})
    manager = manager_factory(svc)
    service = manager.get("a")
    with pytest.raises(StartFailedError):
        await service.start()
    assert service.state is State.FATAL
    await service.restart(config=fake_service("a", port=svc.spec.port), wait=True)
    assert service.state is State.READY


async def test_stop_during_start(manager_factory: Any) -> None:
    manager = manager_factory(fake_service("a", "--startup-delay", "30"))
    service = manager.get("a")
    await service.start(wait=False)
    await wait_state(service, State.STARTING)
    while service.pid is None:
        await asyncio.sleep(0.01)
    pid = service.pid
    await service.stop()
    assert service.state is State.STOPPED
    assert not psutil.pid_exists(pid)


async def test_ensure_ready_during_stop_no_deadlock(manager_factory: Any) -> None:
    manager = manager_factory(fake_service("a", "--ignore-term", stop_timeout=0.5))
    service = manager.get("a")
    await service.start()
    stopping = asyncio.create_task(service.stop())
    await wait_state(service, State.STOPPING)
    await asyncio.wait_for(service.ensure_ready(), 20)
    await stopping
    assert service.state is State.READY


async def test_concurrent_restarts_serialized(manager_factory: Any) -> None:
    manager = manager_factory(fake_service("a"))
    service = manager.get("a")
    await service.start()
    seen: list[State] = []
    service.deps.listeners.append(lambda name, old, new, reason: seen.append(new))
    await asyncio.gather(*(service.restart(wait=True) for _ in range(3)))
    assert service.state is State.READY
    # Each restart is a full stop → start cycle; none interleaves with another: every stop is
    # followed by its own start before the next stop (a later restart may cut a start short).
    cycles = [state for state in seen if state in (State.STOPPED, State.STARTING)]
    assert cycles == [State.STOPPED, State.STARTING] * 3, seen
    assert seen[-1] is State.READY
    assert service.restarts["requested"] == 3


async def test_stop_kills_whole_tree_including_setsid(manager_factory: Any) -> None:
    svc = fake_service(
        "a", "--ignore-term", "--children", "2", "--setsid-children", "2", stop_timeout=0.5
    )
    manager = manager_factory(svc)
    service = manager.get("a")
    await service.start()
    tree = set(service.tree_pids())
    assert len(tree) >= 5, tree
    await service.stop()
    alive = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert alive == []


async def test_crash_leaves_no_orphans(manager_factory: Any) -> None:
    svc = fake_service("a", "--children", "1", "--setsid-children", "1")
    manager = manager_factory(svc)
    service = manager.get("a")
    await service.start()
    tree = set(service.tree_pids())
    os.kill(service.pid or 0, signal.SIGKILL)
    await wait_state(service, State.BACKOFF, State.STARTING)
    await wait_state(service, State.READY)
    alive = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert alive == []


async def test_output_pump_handles_long_lines_and_cr(manager_factory: Any) -> None:
    manager = manager_factory(fake_service("a", "--long-line", "300000", "--flood", "50"))
    service = manager.get("a")
    await service.start()
    while not any("progress" in ln.text for ln in service.ring.tail()):
        await asyncio.sleep(0.05)
    texts = [ln.text for ln in service.ring.tail()]
    assert any(t.startswith("xxxx") for t in texts)
    assert all(len(t) <= 17 * 1024 for t in texts)
    log_file = service.deps.log_dir / "a.log"  # type: ignore[operator]
    assert log_file.stat().st_size > 300000


async def test_port_in_use_names_owner(manager_factory: Any) -> None:
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        svc = fake_service("a", port=port, restart={"max_failures": 1})
        manager = manager_factory(svc)
        with pytest.raises(StartFailedError) as info:
            await manager.get("a").start()
        assert info.value.cause == "port_in_use"
        assert f"pid {os.getpid()}" in manager.get("a").reason
    finally:
        holder.close()


async def test_missing_executable_is_diagnosed(manager_factory: Any) -> None:
    svc = fake_service("a", restart={"max_failures": 1})
    spec = svc.spec.model_copy(update={"command": ("/nonexistent/bin/vllm", "serve")})
    manager = manager_factory(svc.model_copy(update={"spec": spec}))
    with pytest.raises(StartFailedError) as info:
        await manager.get("a").start()
    assert info.value.cause == "executable_missing"
    assert "/nonexistent/bin/vllm" in manager.get("a").reason


async def test_crash_hint_spells_flags_as_the_profile_does(manager_factory: Any) -> None:
    # vLLM's message; the hint names max-model-len, the profile wrote max_model_len.
    line = (
        "ValueError: The model's max seq len (32768) is larger than the maximum number of "
        "tokens that can be stored in KV cache (5632)."
    )
    args = {"max_model_len": 32768, "gpu-memory-utilization": 0.5}
    svc = fake_service("a", "--fail-with", line, args=args, restart={"max_failures": 1})
    service = manager_factory(svc).get("a")
    with pytest.raises(StartFailedError):
        await service.start()
    assert service.last_failure is not None
    assert "set max_model_len to 5632 or lower" in service.last_failure.hint
    assert "raise gpu-memory-utilization" in service.last_failure.hint
