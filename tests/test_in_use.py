"""A service in use is never stopped for idleness: requests hold it, through the real gateway.

Real Services (fake engine subprocesses) behind the real Gateway; the stops are slow on
purpose (an engine that ignores SIGTERM waits out its grace), which is when a request for
another service arrives in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_supervisor.config.models import Config, Policy
from llm_supervisor.engines.base import make_prober
from llm_supervisor.gateway.app import Gateway
from llm_supervisor.process.registry import GroupRegistry
from llm_supervisor.reload.reloader import Reloader
from llm_supervisor.service.deps import ServiceDeps
from llm_supervisor.service.manager import Manager
from llm_supervisor.service.service import Service
from llm_supervisor.service.states import State
from llm_supervisor.service.usage import Usage

from .conftest import fake_service

pytestmark = pytest.mark.timeout(60)


class ManagerBackend:
    """The gateway's view of a Manager, as the daemon's backend gives it."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    def config(self) -> Config:
        return self.manager.config

    def lease(self, service: str) -> AbstractContextManager[object]:
        return self.manager.get(service).lease()

    async def ensure_ready(self, service: str) -> None:
        await self.manager.get(service).ensure_ready(10.0)

    async def stop_if_idle(self, service: str, idle_for: float) -> bool:
        return await self.manager.get(service).stop_if_idle(idle_for)

    def usage(self, service: str) -> Usage:
        return self.manager.get(service).usage()


@contextlib.asynccontextmanager
async def gateway_for(manager: Manager) -> AsyncIterator[tuple[Gateway, str]]:
    gw = Gateway(ManagerBackend(manager))
    ready = asyncio.Event()
    task = asyncio.create_task(gw.serve("127.0.0.1", 0, ready, loops=False))
    await ready.wait()
    try:
        yield gw, f"http://127.0.0.1:{gw.port}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def when_stopping(manager: Manager, name: str) -> asyncio.Event:
    event = asyncio.Event()

    def listener(service: str, old: State, new: State, reason: str) -> None:
        if service == name and new is State.STOPPING:
            event.set()

    manager.listeners.append(listener)
    return event


async def test_idle_stop_spares_a_service_that_got_a_request_meanwhile(
    manager_factory: Any,
) -> None:
    slow_stop = fake_service("a", "--ignore-term", stop_timeout=2.0)
    slow_reply = fake_service("b", "--reply-delay", "2.5")
    manager = manager_factory(slow_stop, slow_reply)
    # keep_alive 0: both are idle as soon as nobody uses them.
    manager.config = manager.config.model_copy(
        update={"policy": Policy.model_validate({"keep_alive": {"default": 0}})}
    )
    for name in ("a", "b"):
        await manager.get(name).start()
    a_stopping = when_stopping(manager, "a")
    async with gateway_for(manager) as (gw, url):
        idle = asyncio.create_task(gw.idle.check_once())
        await a_stopping.wait()  # the idle pass is busy stopping a; now b gets a request
        async with httpx.AsyncClient(timeout=20) as client:
            body = {"model": "b", "messages": [{"role": "user", "content": "x"}]}
            reply = await client.post(url + "/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == "fake reply"
        assert await idle == ["a"]
    assert manager.get("a").state is State.STOPPED
    assert manager.get("b").state is State.READY
    # Status shows the last use as Unix time (the Service's clock, converted), not monotonic.
    assert manager.get("b").snapshot()["last_request"] == pytest.approx(time.time(), abs=5)
    assert manager.get("a").usage().stopped_idle


@pytest.fixture
async def clocked_service(state_dir: Path, tmp_path: Path) -> AsyncIterator[Any]:
    """One Service on a clock the test moves (``now[0]``)."""
    now = [1000.0]
    prober = make_prober()
    deps = ServiceDeps(
        http=prober, registry=GroupRegistry(state_dir), log_dir=tmp_path, clock=lambda: now[0]
    )
    service = Service(fake_service("a"), deps)
    yield service, now
    await service.stop("test over")
    await prober.close()


async def test_stop_if_idle_counts_from_the_last_use(clocked_service: Any) -> None:
    service, now = clocked_service
    await service.start()  # ready at 1000: never used, so idle from then
    assert not await service.stop_if_idle(600)
    now[0] += 500
    with service.lease():
        now[0] += 200  # a long request
        assert not await service.stop_if_idle(600)
        assert not await service.stop_if_idle(0)  # in use: not even "idle for 0 s"
        assert service.usage().in_flight == 1 and service.usage().idle_since is None
    now[0] += 599  # the request's end counts as use
    assert not await service.stop_if_idle(600)
    now[0] += 2
    assert await service.stop_if_idle(600)
    assert service.state is State.STOPPED and service.reason == "idle"
    assert not await service.stop_if_idle(0)  # stopped: nothing to stop


async def test_drained_waits_for_requests_in_flight(manager_factory: Any) -> None:
    service = manager_factory(fake_service("a", "--startup-delay", "30")).get("a")
    assert await service.drained(0.0)
    lease = service.lease()
    lease.__enter__()
    assert not await service.drained(0.01)
    waiter = asyncio.create_task(service.drained(10.0))
    await asyncio.sleep(0)
    lease.__exit__(None, None, None)
    assert await waiter


async def test_reload_that_removes_a_service_lets_its_request_finish(
    manager_factory: Any, tmp_path: Path
) -> None:
    manager = manager_factory(fake_service("b", "--reply-delay", "1.0"))
    service = manager.get("b")
    await service.start()
    without_b = manager.config.model_copy(update={"services": {}})
    reloader = Reloader(tmp_path, manager, lambda: without_b)
    engine_output = service.ring.follow()
    async with gateway_for(manager) as (_, url), httpx.AsyncClient(timeout=20) as client:
        body = {"model": "b", "messages": [{"role": "user", "content": "x"}]}
        reply = asyncio.create_task(client.post(url + "/v1/chat/completions", json=body))
        async for line in engine_output:  # the engine has the request: it is in flight
            if line.text.startswith("request POST /v1/chat/completions"):
                break
        await engine_output.aclose()
        result = await reloader.reload_now()
        response = await reply
    assert result["result"] == "applied", result
    assert response.status_code == 200, response.text
    assert "b" not in manager.services and service.state is State.STOPPED
