"""A full disk under the log dir and a read-only state dir: clear errors, engines keep running.

chmod does not stop root; a small tmpfs that is full or mounted read-only does, and so does
``chattr +i`` (root only: skipped with the reason elsewhere).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.daemon_harness import CLI, clean_env, profile_text, wait_until, write_atomic

from .conftest import TIRELESS, daemon_on, engines, tmpfs

pytestmark = pytest.mark.chaos


@pytest.mark.timeout(90)
def test_full_log_dir_logs_one_error_per_service_and_engines_keep_running(
    tmp_path: Path, state_dir: Path
) -> None:
    # ~2,000 lines a second each: a 128 KiB disk is full within a second.
    write_atomic(tmp_path / "cpu.yaml", profile_text(engines(2, "--flood", "2000")))
    with (
        tmpfs(tmp_path / "logs", "128k") as logs,
        daemon_on(tmp_path, state_dir, log_dir=logs) as daemon,
    ):
        pids = daemon.pids()

        def failed() -> list[dict[str, object]] | None:
            events = daemon.events("log.write_failed")
            return events if {e["path"] for e in events} == {
                str(logs / f"{name}.log") for name in pids
            } else None  # fmt: skip

        events = wait_until(failed, 20, "a log.write_failed for each service")
        assert all("No space left on device" in str(e["error"]) for e in events)
        time.sleep(1.5)  # still flooding onto the full disk
        assert daemon.pids() == pids
        status = daemon.services()
        assert all(s["state"] == "ready" and s["restarts"] == 0 for s in status.values())
        # The output still flows (the spool is drained whatever the log disk does): the ring
        # buffer has fresh lines.
        for name in pids:
            lines = daemon.client().log_tail(name, 5, None)
            assert lines and time.time() - lines[-1].ts < 5, name
        # One error per failure spell, not one per line.
        assert len(daemon.events("log.write_failed")) <= 4 * len(pids)


@contextlib.contextmanager
def state_dir_for(path: Path, when: str) -> Iterator[tuple[Path, Callable[[], None]]]:
    """At start: a tmpfs mounted read-only. While running: ``chattr +i`` on the state dir
    and its groups dir once the daemon is up (a remount to read-only fails with EBUSY while
    the daemon holds its lock file open for writing)."""
    if when == "at_start":
        with tmpfs(path, "1m", read_only=True):
            yield path, lambda: None
        return
    if shutil.which("chattr") is None or os.geteuid() != 0:
        pytest.skip("chattr +i needs root and chattr(1)")
    path.mkdir()
    frozen = [path / "groups", path]

    def freeze() -> None:
        for target in frozen:
            subprocess.run(["chattr", "+i", str(target)], check=True, capture_output=True)

    try:
        yield path, freeze
    finally:
        for target in frozen:
            subprocess.run(["chattr", "-i", str(target)], capture_output=True)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("when", ["at_start", "while_running"])
def test_read_only_state_dir_is_reported_and_supervision_goes_on(tmp_path: Path, when: str) -> None:
    services = engines(2, restart=TIRELESS)
    write_atomic(tmp_path / "cpu.yaml", profile_text(services))
    control = tmp_path / "control"
    control.mkdir()
    with (
        state_dir_for(tmp_path / "state", when) as (state, freeze),
        daemon_on(tmp_path, state, control_dir=control, log_dir=tmp_path / "logs") as daemon,
    ):
        freeze()
        pids = daemon.pids()
        victim, bystander = sorted(pids)
        psutil.Process(pids[victim]).kill()  # its restart must record the new group

        def restarted(s: dict[str, object]) -> bool:
            svc = daemon.services()[victim]
            return svc["state"] == "ready" and svc["pid"] not in (None, pids[victim])

        daemon.wait_status(restarted, 20, "the killed engine restarted")
        errors = daemon.events("state.write_failed")
        assert errors and str(state) in str(errors[0]["dir"]), errors
        if when == "at_start":
            assert daemon.events("state.pid_file_failed")
        assert daemon.pids()[bystander] == pids[bystander]
        assert daemon.services()[bystander]["restarts"] == 0
        # Without records the next program would take its own engines for orphans.
        refused = daemon.cli("upgrade", timeout=60)
        assert refused.returncode == 1 and "cannot record the engines" in refused.stderr
        assert daemon.pids()[bystander] == pids[bystander]


@pytest.mark.timeout(90)
def test_a_second_daemon_on_a_read_only_state_dir_is_refused(tmp_path: Path) -> None:
    """The lock is the state dir itself: taken even where no lock file can be created.
    Before, the second daemon took the first one's engines for orphans and killed them."""
    write_atomic(tmp_path / "cpu.yaml", profile_text(engines(1)))
    first_control, second_control = tmp_path / "c1", tmp_path / "c2"
    first_control.mkdir()
    second_control.mkdir()
    with (
        tmpfs(tmp_path / "state", "1m", read_only=True) as state,
        daemon_on(tmp_path, state, control_dir=first_control, log_dir=tmp_path / "l1") as first,
    ):
        pids = first.pids()
        argv = [*CLI, "run", "--config-dir", str(tmp_path), "--state-dir", str(state),
                "--log-dir", str(tmp_path / "l2"), "--gateway", "off",
                "--control", f"unix:{second_control / 'control.sock'}"]  # fmt: skip
        second = subprocess.run(argv, env=clean_env(), capture_output=True, text=True,
                                timeout=60)  # fmt: skip
        assert second.returncode == 1, second.stderr[-2000:]
        assert "another daemon" in second.stderr and str(state) in second.stderr
        assert first.pids() == pids
        assert all(psutil.pid_exists(pid) for pid in pids.values() if pid)
