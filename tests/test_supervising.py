"""The watchdog's question: is every supervision task alive, not merely the event loop?"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from llm_supervisor.daemon.daemon import Daemon, DaemonOptions
from llm_supervisor.service.states import State

from .conftest import fake_service

pytestmark = pytest.mark.timeout(30)


def daemon_for(manager: Any, tmp_path: Path) -> Daemon:
    daemon = Daemon(DaemonOptions(tmp_path, tmp_path / "state", tmp_path / "logs", "unix:x"))
    daemon.manager = manager
    return daemon


async def test_a_service_without_its_supervision_task_withholds_the_watchdog(
    manager_factory: Any, tmp_path: Path
) -> None:
    manager = manager_factory(fake_service("a"), fake_service("b", start="on-demand"))
    daemon = daemon_for(manager, tmp_path)
    service = manager.get("a")
    await service.start()
    assert daemon.supervising()  # "b" is stopped: nothing to supervise there
    runner = service._runner
    assert runner is not None
    # As if a supervision task had ended without the guard: ready, but nobody watching.
    service._runner = asyncio.create_task(asyncio.sleep(0))
    await service._runner
    assert service.state is State.READY and not daemon.supervising()
    service._runner = runner
    assert daemon.supervising()


async def test_a_dead_vital_loop_withholds_the_watchdog(
    manager_factory: Any, tmp_path: Path
) -> None:
    daemon = daemon_for(manager_factory(fake_service("a", start="on-demand")), tmp_path)
    forever = asyncio.create_task(asyncio.Event().wait())
    ended = asyncio.create_task(asyncio.sleep(0))
    await ended
    daemon._tasks = {"gpu": forever, "status": forever}
    assert daemon.supervising()
    daemon._tasks["gpu"] = ended
    assert not daemon.supervising()
    forever.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await forever
    daemon._tasks = {"gpu": forever, "status": forever}
    assert daemon.supervising()  # cancelled by the shutdown: no reason to withhold


async def test_an_escaped_exception_ends_in_fatal_never_in_a_stale_ready(
    manager_factory: Any,
) -> None:
    """The guard only lets BaseExceptions through; even then status must not say ready."""
    service = manager_factory(fake_service("a")).get("a")
    await service.start()
    runner = service._runner
    assert runner is not None

    class Escape(BaseException):
        pass

    async def escape() -> None:
        raise Escape

    pid = service.pid
    task = asyncio.ensure_future(escape())
    service._runner = task
    task.add_done_callback(service._runner_ended)
    with pytest.raises(Escape):
        await task
    assert service.state is State.FATAL and "supervision ended" in service.reason
    assert pid is not None and service.snapshot()["supervised"] is False
    runner.cancel()
