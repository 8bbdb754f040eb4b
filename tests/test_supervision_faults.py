"""Crash-only supervision: an exception at any await point of a service's supervision
resumes it, and the engine stays supervised (a kill -9 afterwards is still restarted).

The fault is thrown into the supervision coroutine itself, at its n-th suspension, for
every n a clean run reaches: exactly what an unexpected exception (EMFILE from a /proc
read, a probe bug) raised at that await would do. The engine is a real process (sleep);
readiness is answered in-process so the run has few await points and takes milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Coroutine, Generator
from typing import Any

import psutil
import pytest

from llm_supervisor.config.models import Policy, ServiceConfig
from llm_supervisor.engines.command import CommandEngine
from llm_supervisor.service.service import Service
from llm_supervisor.service.states import State

from .conftest import fake_service

pytestmark = pytest.mark.timeout(120)


class Injected(RuntimeError):
    pass


class FaultAt:
    """Runs a coroutine, throwing Injected into it at its ``at``-th resumption (1-based)."""

    def __init__(self, coro: Coroutine[Any, Any, Any], at: int) -> None:
        self.coro, self.at = coro, at
        self.steps = 0
        self.fired = False

    def __await__(self) -> Generator[Any, Any, Any]:
        sent: Any = None
        error: BaseException | None = None
        while True:
            try:
                if error is not None:
                    yielded = self.coro.throw(error)
                elif self.steps == self.at:
                    self.fired = True
                    yielded = self.coro.throw(Injected(f"injected at await #{self.at}"))
                else:
                    yielded = self.coro.send(sent)
            except StopIteration as stop:
                return stop.value
            self.steps += 1
            sent, error = None, None
            try:
                sent = yield yielded
            except BaseException as exc:  # cancellation: passed on to the coroutine
                error = exc


class InstantEngine(CommandEngine):
    """The process is real; "ready" and "live" are answered here, not over HTTP."""

    stop_timeout = 2.0
    startup_timeout = 10.0

    def argv(self, svc: ServiceConfig) -> list[str]:
        return ["sleep", "1000"]

    def env(self, svc: ServiceConfig, policy: Policy) -> dict[str, str]:
        return {}

    async def ready(self, client: Any, svc: ServiceConfig, timeout: float) -> bool:
        await asyncio.sleep(0)
        return True

    async def live(self, client: Any, svc: ServiceConfig, timeout: float) -> bool:
        await asyncio.sleep(0)
        return True


async def until(check: Any, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.005)  # pids and liveness change without an event

    await asyncio.wait_for(poll(), timeout)


def serving(service: Service) -> bool:
    return service.state is State.READY and service.supervised and service.pid is not None


async def scenario(service: Service) -> None:
    """Start, serve, survive a kill -9 of the engine, serve again."""
    await service.start(wait=False)
    await until(lambda: serving(service))
    first = service.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await until(lambda: serving(service) and service.pid != first)
    await asyncio.sleep(0.25)  # some liveness rounds of _watch, each an await point too


def instrument(service: Service, at: int) -> list[FaultAt]:
    made: list[FaultAt] = []
    original = service._supervise

    async def supervise() -> None:
        runner = FaultAt(original(), at)
        made.append(runner)
        await runner

    service._supervise = supervise  # type: ignore[method-assign]
    service.engine = InstantEngine()
    return made


def marked_sleeps(service: Service) -> list[psutil.Process]:
    marker = service.deps.registry.marker(service.name)
    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            if (
                proc.info["name"] == "sleep"
                and proc.environ().get("LLM_SUPERVISOR_OWNER") == marker
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


async def test_supervision_resumes_after_an_exception_at_every_await_point(
    manager_factory: Any,
) -> None:
    health = {"interval": 0.05, "timeout": 0.04}
    spec = dict(health=health, restart={"max_failures": 1000, "window": 1})
    clean = manager_factory(fake_service("clean", **spec)).get("clean")
    runs = instrument(clean, at=-1)
    await scenario(clean)
    points = runs[0].steps
    print(f"{points} await points in a clean run")
    assert points >= 10 and clean.supervision_errors == 0
    await clean.stop()

    fired = 0
    for at in range(1, points):
        fired += await faulted_run(manager_factory(fake_service(f"s{at}", **spec)), at)
    assert fired >= points * 0.8, (fired, points)


async def faulted_run(manager: Any, at: int) -> bool:
    """The scenario with a fault at await ``at``; False if the run never got that far."""
    service = next(iter(manager.services.values()))
    runs = instrument(service, at)
    await scenario(service)  # the kill -9 is restarted whatever was interrupted
    if not runs[0].fired:
        return False  # this run took fewer awaits than the clean one
    assert service.supervision_errors == 1, at
    await until(lambda: serving(service))  # resumed (the fault may be recent)
    before = service.pid
    assert before is not None
    os.kill(before, signal.SIGKILL)  # and supervising: a kill -9 is still restarted
    await until(lambda: serving(service) and service.pid != before)
    # Resuming never leaves a second engine behind, nor runs without one. Polled: the new
    # engine may still be between fork and exec (not yet named "sleep") on a loaded machine.
    await until(lambda: [p.pid for p in marked_sleeps(service)] == [service.pid])
    await service.stop()
    assert marked_sleeps(service) == []
    return True


async def test_a_supervision_error_is_never_shown_ready(manager_factory: Any) -> None:
    """While supervision is interrupted the service is in backoff, with the error named."""
    service = manager_factory(fake_service("a")).get("a")
    service.engine = InstantEngine()
    await service.start()
    pid = service.pid
    seen: list[tuple[State, str]] = []
    service.deps.listeners.append(lambda s, old, new, reason: seen.append((new, reason)))

    def broken(*_: Any) -> bool:
        raise OSError(24, "Too many open files")

    original_live = service.engine.live
    service.engine.live = broken  # type: ignore[method-assign,assignment]
    await until(lambda: service.state is State.BACKOFF)
    assert "Too many open files" in service.reason
    assert service.snapshot()["state"] == "backoff"
    service.engine.live = original_live  # type: ignore[method-assign]
    await until(lambda: serving(service))
    assert service.pid == pid  # the engine was fine: probed again, not restarted
    assert seen[0][0] is State.BACKOFF and seen[-1][0] is State.READY
    assert service.supervision_errors >= 1


async def test_an_error_in_the_cleanup_of_a_hung_engine_finishes_the_cleanup(
    manager_factory: Any,
) -> None:
    """Resuming must not probe a hung engine again for a whole startup_timeout."""
    spec = fake_service("a", "--hang-after", "0.5", health={"timeout": 0.2, "failures": 2,
                                                             "startup_timeout": 60})  # fmt: skip
    service = manager_factory(spec).get("a")
    original = service._cleanup_after_failure
    calls = 0

    async def flaky(child: Any, failure: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(24, "Too many open files")
        await original(child, failure)

    service._cleanup_after_failure = flaky  # type: ignore[method-assign]
    await service.start()
    hung = service.pid
    assert hung is not None
    await until(lambda: calls >= 2, timeout=15)  # resumed straight into the cleanup
    await until(lambda: serving(service) and service.pid != hung, timeout=15)
    assert not psutil.pid_exists(hung)
    assert service.supervision_errors == 1 and service.last_failure is not None
    assert service.last_failure.reason == "health"
