"""Reload storms: 100 SIGHUPs in a second, and 500 invalid configs written while it runs."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.daemon_harness import profile_text, run_daemon, write_atomic

from .conftest import engines

pytestmark = pytest.mark.chaos


@pytest.mark.timeout(60)
def test_sighup_storm_coalesces_into_one_or_two_reloads(tmp_path: Path) -> None:
    write_atomic(tmp_path / "cpu.yaml", profile_text(engines(4)))
    with run_daemon(tmp_path, extra_args=["--no-watch"]) as daemon:
        pids = daemon.pids()
        before = sum(daemon.reload_counts().values())
        start = time.monotonic()
        for i in range(100):  # 100 within half a second
            daemon.signal(signal.SIGHUP)
            time.sleep(max(0.0, start + (i + 1) / 200 - time.monotonic()))
        assert time.monotonic() - start < 1.0
        # Signals of one kind coalesce in the kernel while pending: count what arrived.
        triggered = len(daemon.events("reload.triggered"))
        time.sleep(2.0)  # past the throttle window: a trailing reload would have run
        daemon.wait_status(lambda s: s["reload"]["result"] != "none", 5, "a reload")
        counts = daemon.reload_counts()
        reloads = sum(counts.values()) - before
        print(f"SIGHUP storm: {triggered}+ signals seen, {reloads} reloads {counts}")
        assert 1 <= reloads <= 2, counts
        assert set(counts) <= {"unchanged"}, counts
        assert daemon.pids() == pids, "no service restarted"
        assert all(s["restarts"] == 0 for s in daemon.services().values())
