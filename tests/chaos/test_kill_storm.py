"""200 kill -9 of random engine processes, main engines and their grandchildren alike.

Kills are aimed at ready services only, and a service whose main engine was killed is left
alone until it is ready again with a new pid, so each main kill is exactly one failure of a
ready run. Grandchildren (in the engine's group, or setsid'd out of it) die without their
engine noticing: that is no failure and must not restart anything. So at the end, per
service, ``restarts_by_reason == {"crash": main kills}``, every service is ready, and every
process carrying the daemon's marker belongs to a live tree shown by status.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from tests.daemon_harness import profile_text, run_daemon, write_atomic

from .conftest import TIRELESS, engines, live_tree_pids, marked

pytestmark = pytest.mark.chaos

KILLS = 200


@pytest.mark.timeout(240)
def test_200_random_kills_end_ready_with_exact_restart_counts(tmp_path: Path) -> None:
    services = engines(4, "--children", "1", "--setsid-children", "1", prefix="mixed",
                       restart=TIRELESS, stop_timeout=1.0)  # fmt: skip
    services |= engines(4, "--children", "2", prefix="group", restart=TIRELESS, stop_timeout=1.0)
    write_atomic(tmp_path / "cpu.yaml", profile_text(services))
    rng = random.Random(20260129)
    main_kills: Counter[str] = Counter()
    grandchild_kills = 0
    with run_daemon(tmp_path, timeout=60) as daemon:
        waiting_for: dict[str, int] = {}  # service → main pid we killed
        kills = 0
        while kills < KILLS:
            status = daemon.status()["services"]
            targets = [
                name for name, svc in status.items()
                # pid None while "ready": the exit was seen, the watcher has not run yet
                if svc["state"] == "ready" and svc["pid"] not in (None, waiting_for.get(name))
            ]  # fmt: skip
            if not targets:
                time.sleep(0.01)
                continue
            name = rng.choice(targets)
            svc = status[name]
            pid = rng.choice(svc["pids"])
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                continue  # a grandchild already reaped: pick again
            kills += 1
            if pid == svc["pid"]:
                main_kills[name] += 1
                waiting_for[name] = pid
            else:
                grandchild_kills += 1

        def settled(s: dict[str, object]) -> bool:
            svcs = s["services"]
            assert isinstance(svcs, dict)
            return all(
                v["state"] == "ready" and sum(v["restarts_by_reason"].values()) == main_kills[n]
                for n, v in svcs.items()
            )

        status = daemon.wait_status(settled, timeout=60, what="every service ready again")
        for name, svc in status["services"].items():
            expected = {"crash": main_kills[name]} if main_kills[name] else {}
            assert svc["restarts_by_reason"] == expected, name
            assert svc["restarts"] == main_kills[name], name
        spawned = Counter(e["service"] for e in daemon.events("service.spawned"))
        assert spawned == Counter({n: 1 + main_kills[n] for n in services})
        # Nothing outside the live trees: grandchildren of killed engines were swept.
        time.sleep(0.3)  # a sweep logs before the last kill lands; give the kernel a moment
        strays = {r.pid for r in marked(daemon)} - live_tree_pids(daemon.status())
        assert not strays, f"processes outside every live tree: {sorted(strays)}"
    assert grandchild_kills > 0 and sum(main_kills.values()) > 0
    print(f"kill storm: {sum(main_kills.values())} main kills, {grandchild_kills} grandchild kills")
