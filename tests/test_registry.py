"""The orphan sweep also kills recorded tree members the environment marker cannot find."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from llm_supervisor.process.registry import GroupRegistry
from llm_supervisor.process.tree import ProcRef


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    # Like vLLM's EngineCore after setproctitle: its own session, no visible marker.
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    yield proc
    proc.kill()
    proc.wait()


async def test_sweep_kills_recorded_tree_members_without_marker(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    ref = ProcRef.of(psutil.Process(sleeper.pid))
    registry = GroupRegistry(tmp_path / "state")
    registry.record("svc", 999_999_999, 1.0, tree={ref})  # the leader is long gone
    assert await registry.kill_orphans(timeout=5.0) == [sleeper.pid]
    assert ref.alive() is None
    assert registry.records() == []


async def test_recorded_pid_reused_by_another_process_is_spared(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    wrong_start = ProcRef(sleeper.pid, psutil.Process(sleeper.pid).create_time() - 100)
    registry = GroupRegistry(tmp_path / "state")
    registry.record("svc", 999_999_999, 1.0, tree={wrong_start})
    assert await registry.kill_orphans(timeout=1.0) == []
    assert ProcRef.of(psutil.Process(sleeper.pid)).alive() is not None


async def test_marker_scan_that_blocks_does_not_stall_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from llm_supervisor.process import tree

    release = threading.Event()
    monkeypatch.setattr(tree, "find_owners", lambda marker, prefix=False: release.wait(10) or {})
    try:
        assert await tree.find_marked_async("x", timeout=0.2) == set()
    finally:
        release.set()
