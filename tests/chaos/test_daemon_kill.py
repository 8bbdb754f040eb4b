"""kill -9 of the daemon during a start, a reload and a shutdown; then a fresh daemon.

The engines ignore SIGTERM and have a grandchild in their group plus one setsid'd out of it.
A fresh daemon on the same state dir adopts every engine whose record matches the config
(same processes, whole trees, no new spawn) and brings it to ready; when the profile was
edited while no daemon ran, nothing matches and it must kill every one of them (its registry
records and the environment marker) before it starts anything.
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


def kill_9_at(moment: str, config_dir: Path, state_dir: Path) -> set[ProcRef]:
    """Reach ``moment`` with a first daemon, kill -9 it; the processes it left alive."""
    delay, reach = SCENARIOS[moment]
    write_atomic(config_dir / "cpu.yaml", profile(delay))
    with daemon_on(config_dir, state_dir, wait_ready=False) as first:
        reach(first)
        before: set[ProcRef] = marked(first)
        first.proc.kill()
        first.proc.wait()
        left = before | marked(first)
    left = {r for r in left if r.alive()}
    assert left, "the attack left no engine behind: nothing was tested"
    return left


@pytest.mark.timeout(120)
@pytest.mark.parametrize("moment", list(SCENARIOS))
def test_kill_9_of_the_daemon_then_a_fresh_one_adopts_every_engine(
    tmp_path: Path, state_dir: Path, moment: str
) -> None:
    left = kill_9_at(moment, tmp_path, state_dir)
    with daemon_on(tmp_path, state_dir, timeout=60) as second:
        status: dict[str, Any] = second.status()
        assert all(s["state"] == "ready" for s in status["services"].values())
        assert not second.events("orphan.killed") and not second.events("service.spawned")
        # The same processes, whole trees (grandchildren outside the group included).
        assert all(r.alive() for r in left), sorted(r.pid for r in left if not r.alive())
        assert {r.pid for r in marked(second)} <= live_tree_pids(status) | {r.pid for r in left}
        assert {s["pid"] for s in status["services"].values()} <= {r.pid for r in left}
        print(f"{moment}: {len(left)} processes adopted by the fresh daemon")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("moment", list(SCENARIOS))
def test_kill_9_of_the_daemon_then_an_edited_profile_kills_every_orphan(
    tmp_path: Path, state_dir: Path, moment: str
) -> None:
    orphans = kill_9_at(moment, tmp_path, state_dir)
    # Edited while no daemon ran: no engine matches its service's spec any more.
    edited = (tmp_path / "cpu.yaml").read_text().replace("max-model-len", "max-num-seqs")
    write_atomic(tmp_path / "cpu.yaml", edited)
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
