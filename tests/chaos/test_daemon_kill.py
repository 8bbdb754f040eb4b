"""kill -9 of the daemon during a start, a reload and a shutdown; then a fresh daemon.

The engines ignore SIGTERM (so the kernel's parent-death SIGTERM does not end them) and
have a grandchild in their group plus one setsid'd out of it: after the kill they are all
orphans. A fresh daemon on the same state dir must kill every one of them (its registry
records and the environment marker) before it starts anything, then bring every boot
service to ready.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llm_supervisor.process.tree import ProcRef
from tests.daemon_harness import DaemonProcess, profile_text, wait_until, write_atomic

from .conftest import daemon_on, engines, live_tree_pids, marked

pytestmark = pytest.mark.chaos

FLAGS = ("--ignore-term", "--children", "1", "--setsid-children", "1")


def profile(delay: float, max_len: int = 1024) -> str:
    services = engines(3, *FLAGS, "--startup-delay", str(delay), stop_timeout=3.0,
                       args={"max-model-len": max_len})  # fmt: skip
    return profile_text(services)


def starting(daemon: DaemonProcess) -> None:
    def spawned() -> bool:
        services = daemon.services().values()
        return all(s["state"] == "starting" and len(s["pids"]) >= 3 for s in services)

    wait_until(spawned, 30, "every engine spawned, with its grandchildren")


def reloading(daemon: DaemonProcess) -> None:
    daemon.wait_ready(timeout=30)
    before = daemon.pids()
    text = (daemon.config_dir / "cpu.yaml").read_text().replace("1024", "2048")
    write_atomic(daemon.config_dir / "cpu.yaml", text)

    def relaunched() -> bool:
        services = daemon.services()
        return all(
            s["pid"] not in (None, before[n]) and len(s["pids"]) >= 3 for n, s in services.items()
        )

    wait_until(relaunched, 30, "the reload relaunching every service")


def shutting_down(daemon: DaemonProcess) -> None:
    daemon.wait_ready(timeout=30)
    daemon.signal(signal.SIGTERM)
    wait_until(lambda: daemon.events("stop.term"), 10, "the stop ladder under way")


SCENARIOS: dict[str, tuple[float, Callable[[DaemonProcess], None]]] = {
    "start": (3.0, starting),
    "reload": (1.0, reloading),
    "shutdown": (0.0, shutting_down),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("moment", list(SCENARIOS))
def test_kill_9_of_the_daemon_then_a_fresh_one_cleans_up(
    tmp_path: Path, state_dir: Path, moment: str
) -> None:
    delay, reach = SCENARIOS[moment]
    write_atomic(tmp_path / "cpu.yaml", profile(delay))
    with daemon_on(tmp_path, state_dir, wait_ready=False) as first:
        reach(first)
        before: set[ProcRef] = marked(first)
        first.proc.kill()
        first.proc.wait()
        orphans = before | marked(first)
    orphans = {r for r in orphans if r.alive()}
    assert orphans, "the attack left no orphans: nothing was tested"

    with daemon_on(tmp_path, state_dir, timeout=60) as second:
        survivors = sorted(r.pid for r in orphans if r.alive())
        assert not survivors, f"engines of the killed daemon still alive: {survivors}"
        status: dict[str, Any] = second.status()
        assert all(s["state"] == "ready" for s in status["services"].values())
        strays = {r.pid for r in marked(second)} - live_tree_pids(status)
        assert not strays, f"marked processes outside the live trees: {sorted(strays)}"
        # Logged, and only ours (an orphan the first daemon had just SIGKILLed may die on its
        # own before the sweep: the sweep need not log every one).
        killed = {e["pid"] for e in second.events("orphan.killed")}
        assert killed and killed <= {r.pid for r in orphans}, (killed, orphans)
        print(f"{moment}: {len(killed)} of {len(orphans)} orphans killed by the fresh daemon")
