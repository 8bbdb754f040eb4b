"""Engines outlive the daemon: kill -9 and a new daemon, or an upgrade in place, reload nothing.

Every test runs the real daemon (tests/daemon_harness.py) over fake engines that behave like
Go on a broken stdout (``--go-sigpipe``: SIGPIPE kills them), keep printing while no daemon
runs (``--heartbeat``, a line per request), and are attacked from outside.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from llm_supervisor import __version__
from llm_supervisor.process.tree import find_marked, kill_refs
from tests.conftest import fake_service
from tests.daemon_harness import (
    FAKE_ENGINE,
    DaemonProcess,
    fake_vllm,
    free_port,
    profile_text,
    run_daemon,
    wait_until,
    write_atomic,
)

pytestmark = pytest.mark.timeout(120)

GO_LIKE = ("--go-sigpipe", "--heartbeat", "0.2")


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state dir shared by consecutive daemons; every engine on it dies in teardown."""
    path = Path(tempfile.mkdtemp(prefix="adopt-", dir="/tmp"))  # short: socket path limit
    yield path
    refs = find_marked(f"{path.resolve()}::", prefix=True)
    kill_refs(refs)
    psutil.wait_procs([p for r in refs if (p := r.alive()) is not None], timeout=5)
    shutil.rmtree(path, ignore_errors=True)


def three_engines(config_dir: Path) -> dict[str, dict[str, Any]]:
    services = {
        f"m{i}": fake_vllm(free_port(), f"model-{i}", *GO_LIKE, restart={"backoff_initial": 0.05})
        for i in range(3)
    }
    write_atomic(config_dir / "cpu.yaml", profile_text(services))
    return services


def chat(port: int, model: str, *, timeout: float = 30.0) -> int:
    """One request on a fresh connection (as a client library without a pool does)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
        headers = {"Content-Type": "application/json", "Connection": "close"}
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def services_of(daemon: DaemonProcess) -> dict[str, dict[str, Any]]:
    return daemon.services()


# -- kill -9 of the daemon ---------------------------------------------------------------


def test_kill_9_then_a_new_daemon_adopts_every_engine_without_a_restart(
    tmp_path: Path, state_dir: Path
) -> None:
    three_engines(tmp_path)
    port = free_port()
    logs = tmp_path / "logs"
    with run_daemon(tmp_path, state_dir=state_dir, gateway_port=port, log_dir=logs) as first:
        assert chat(port, "model-0") == 200
        before = services_of(first)
        pids = {name: s["pid"] for name, s in before.items()}
        first.proc.kill()
        first.proc.wait()
    killed_at = time.time()

    # While no daemon runs, the engines keep serving and keep writing their logs: a pipe
    # would have killed these Go-like engines with SIGPIPE on their next line.
    assert chat(before["m1"]["port"], "model-1") == 200
    spool = state_dir / "spool" / "m1.out"  # the engine's output, read by no one right now
    wait_until(lambda: b"request POST /v1/chat" in spool.read_bytes(), 5, "m1 logs it")
    time.sleep(0.5)  # heartbeats keep coming while nobody reads
    assert all(psutil.pid_exists(pid) for pid in pids.values())

    started = time.monotonic()
    with run_daemon(tmp_path, state_dir=state_dir, gateway_port=port, log_dir=logs) as second:
        took = time.monotonic() - started
        print(f"kill -9: new daemon started to every engine adopted and ready: {took:.2f}s")
        after = services_of(second)
        assert {name: s["pid"] for name, s in after.items()} == pids
        for name, svc in after.items():
            assert svc["state"] == "ready", svc
            assert svc["restarts"] == before[name]["restarts"] == 0
            # The original uptime: ready since before the kill, not since adoption.
            assert svc["uptime"] >= before[name]["uptime"] + (time.time() - killed_at) - 0.5
        assert not second.events("service.spawned"), "nothing was started again"
        assert chat(port, "model-2") == 200  # the gateway routes to the adopted engine
        # `logs` shows what the engine wrote while no daemon ran.
        text = [line.text for line in second.client().log_tail("m1", 1000, None)]
        assert any(t.startswith("request POST /v1/chat") for t in text), text[-5:]
        late = [float(t.split(" at ")[1]) for t in text if t.startswith("heartbeat")]
        assert any(killed_at < ts < killed_at + 0.5 for ts in late), "lines from the gap"
        # … and so does the log file, which only the daemon writes.
        wait_until(lambda: "request POST /v1/chat" in (logs / "m1.log").read_text(), 5, "m1.log")

        # An adopted engine is no child of ours: its exit is seen (pidfd), its code is not.
        os.kill(pids["m0"], signal.SIGKILL)
        status = second.wait_status(
            lambda st: st["services"]["m0"]["pid"] not in (None, pids["m0"])
            and st["services"]["m0"]["state"] == "ready",
            20, "m0 restarted",
        )  # fmt: skip
        last_exit = status["services"]["m0"]["last_exit"]
        assert last_exit["code"] is None and last_exit["signal"] is None
        assert "exit code unknown" in last_exit["message"]
        assert status["services"]["m0"]["restarts"] == 1

        # `systemctl stop`: the daemon's shutdown stops adopted engines like its own.
        engines = [ref for ref in find_marked(second.marker_prefix, prefix=True)]
        second.signal(signal.SIGTERM)
        assert second.proc.wait(30) == 0
        assert not [ref.pid for ref in engines if ref.alive()]


def test_go_like_fake_engine_dies_of_sigpipe_when_its_reader_is_gone() -> None:
    """The fake is faithful: what a pipe to a dead daemon would do to Ollama."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, FAKE_ENGINE, "--port", str(port), "--go-sigpipe"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        wait_until(lambda: b"serving" in proc.stdout.readline(), 10, "the fake serving")  # type: ignore[union-attr]
        proc.stdout.close()  # the reader dies (as the daemon's end of a pipe would)
        with contextlib.suppress(OSError):
            chat(port, "m", timeout=5)
        assert proc.wait(10) == -signal.SIGPIPE
    finally:
        proc.kill()
        proc.wait()


# -- upgrade in place ------------------------------------------------------------------


class Hammer:
    """Clients sending requests through the gateway, each on a fresh connection."""

    def __init__(self, port: int, models: list[str], clients: int = 4) -> None:
        self.port, self.models = port, models
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def __enter__(self) -> Hammer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                code = chat(self.port, self.models[(i + n) % len(self.models)])
            except OSError as exc:  # refused, reset: what must not happen
                self.failures.append(repr(exc))
                continue
            if code == 200:
                self.ok += 1
            else:
                self.failures.append(f"HTTP {code}")


def sitecustomize(path: Path, text: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "sitecustomize.py").write_text(text)


def test_upgrade_keeps_engines_sockets_and_output_under_load(
    tmp_path: Path, state_dir: Path
) -> None:
    three_engines(tmp_path)
    port = free_port()
    site = tmp_path / "site"  # on the daemon's PYTHONPATH: what `pip install` would change
    site.mkdir()
    env = {"PYTHONPATH": str(site)}
    with run_daemon(tmp_path, state_dir=state_dir, gateway_port=port, env=env) as daemon:
        before = daemon.status()
        pids = {name: s["pid"] for name, s in before["services"].items()}
        # "Install" a new version: the next program of the daemon reports it.
        sitecustomize(site, "import llm_supervisor\nllm_supervisor.__version__ = '9.9.9-test'\n")
        with Hammer(port, ["model-0", "model-1", "model-2"]) as hammer:
            wait_until(lambda: hammer.ok >= 20, 20, "traffic flowing")
            done = daemon.cli("upgrade", timeout=120)
            served_before = hammer.ok
            wait_until(lambda: hammer.ok >= served_before + 20, 20, "traffic after the upgrade")
        assert done.returncode == 0, done.stderr
        assert f"upgraded {__version__} -> 9.9.9-test" in done.stdout
        assert hammer.failures == [], hammer.failures[:5]
        after = daemon.status()
        assert after["version"] == "9.9.9-test"
        assert after["daemon"]["uptime"] > before["daemon"]["uptime"], "the same daemon"
        assert after["daemon"]["pid"] == before["daemon"]["pid"] == daemon.proc.pid
        assert after["daemon"]["generation"] == 1
        assert {name: s["pid"] for name, s in after["services"].items()} == pids
        assert all(s["state"] == "ready" and s["restarts"] == 0 for s in after["services"].values())
        upgraded = daemon.events("daemon.upgraded")
        assert [(e["old"], e["new"]) for e in upgraded] == [(__version__, "9.9.9-test")]
        # The ring buffer is refilled from the log file: output from before the upgrade.
        text = [line.text for line in daemon.client().log_tail("m0", 1000, None)]
        assert any(t.startswith("fake engine pid=") for t in text), text[:3]
        print(f"upgrade under load: {hammer.ok} requests, 0 failed; "
              f"exec to ready {_exec_to_ready(daemon):.3f}s")  # fmt: skip


def _exec_to_ready(daemon: DaemonProcess) -> float:
    from datetime import datetime

    def at(name: str) -> float:
        stamp = daemon.events(name)[-1]["timestamp"]
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

    return at("daemon.upgraded") - at("daemon.exec")


def test_upgrade_to_code_that_cannot_start_is_refused_and_changes_nothing(
    tmp_path: Path, state_dir: Path
) -> None:
    services = {"m0": fake_vllm(free_port(), "model-0"), "off": fake_vllm(free_port(), "off")}
    write_atomic(tmp_path / "cpu.yaml", profile_text(services))
    site = tmp_path / "site"
    site.mkdir()
    with run_daemon(tmp_path, state_dir=state_dir, env={"PYTHONPATH": str(site)}) as daemon:
        assert daemon.cli("stop", "off").returncode == 0  # the operator's choice: stays down
        pid = daemon.pids()["m0"]
        # A broken install: a module of the new code fails to import (None in sys.modules
        # makes every import of it fail, in the pre-check as in a new program).
        sitecustomize(site, "import sys\nsys.modules['llm_supervisor.daemon.daemon'] = None\n")
        refused = daemon.cli("upgrade", timeout=120)
        assert refused.returncode == 1, refused
        assert "import of llm_supervisor.daemon.daemon halted" in refused.stderr
        assert "running daemon is unchanged" in refused.stderr
        # SIGUSR2 does the same, and says so in the log.
        daemon.signal(signal.SIGUSR2)
        wait_until(lambda: daemon.events("upgrade.refused"), 60, "SIGUSR2 refused")
        status = daemon.status()
        assert status["daemon"]["generation"] == 0
        assert daemon.pids() == {"m0": pid, "off": None}
        # Fixed install: SIGUSR2 upgrades.
        (site / "sitecustomize.py").unlink()
        daemon.signal(signal.SIGUSR2)
        daemon.wait_status(lambda st: st["daemon"]["ready"] and st["daemon"]["generation"] == 1,
                           60, "upgraded")  # fmt: skip
        daemon.wait_ready(["m0"])
        assert daemon.pids() == {"m0": pid, "off": None}, "an upgrade starts nothing"
        assert [e["service"] for e in daemon.events("service.spawned")] == ["m0", "off"]
        assert daemon.proc.poll() is None


# -- what makes an engine adoptable ------------------------------------------------------


async def test_fingerprint_follows_the_spec_not_the_daemons_own_environment(
    manager_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    fingerprint = manager_factory(fake_service("a", port=port)).services["a"].fingerprint()
    # systemd gives every invocation a new INVOCATION_ID: that is no change of the engine.
    monkeypatch.setenv("INVOCATION_ID", "another-start")
    assert manager_factory(fake_service("a", port=port)).services["a"].fingerprint() == fingerprint
    for changed in (
        fake_service("a", port=port, args={"max-model-len": 2048}),
        fake_service("a", port=port, env={"HF_HOME": "/srv/hf"}),
        fake_service("a", port=free_port()),
    ):
        assert manager_factory(changed).services["a"].fingerprint() != fingerprint


def test_upgrade_during_a_load_lets_the_same_engine_finish_loading(
    tmp_path: Path, state_dir: Path
) -> None:
    services = {"slow": fake_vllm(free_port(), "slow", "--loading-lines", "--startup-delay", "4")}
    write_atomic(tmp_path / "cpu.yaml", profile_text(services))
    with run_daemon(tmp_path, state_dir=state_dir, wait_ready=False) as daemon:
        pid = daemon.wait_status(lambda st: st["services"]["slow"]["pid"], 20, "spawned")[
            "services"
        ]["slow"]["pid"]
        done = daemon.cli("upgrade", timeout=120)  # does not wait for loads under way
        assert done.returncode == 0, done.stderr
        assert daemon.services()["slow"]["pid"] == pid
        daemon.wait_ready(["slow"])
        svc = daemon.services()["slow"]
        assert (svc["state"], svc["pid"], svc["restarts"]) == ("ready", pid, 0)
        assert [e["service"] for e in daemon.events("service.spawned")] == ["slow"]
