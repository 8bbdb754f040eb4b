"""The daemon and its CLI against the real CPU build of vLLM (marker ``vllm``, slow).

Each vLLM start costs about a minute on 2 cores, so two daemons carry a sequence of checks:

- ``test_supervises_a_real_vllm``: boot start and a completion through the gateway; kill -9
  of the API server (orphaned EngineCore/Worker swept, restarted, one engine tree); a reload
  of max-model-len restarts only that service; a reload above max_position_embeddings is
  diagnosed from vLLM's own error and rolled back; ``llm-supervisor stop`` leaves nothing.
- ``test_idle_stop_on_demand_start_and_shutdown``: an on-demand service started by a gateway
  request, stopped after a short keep_alive, started again; SIGTERM of the daemon leaves nothing.

Measured numbers are printed (``pytest -s``): time to ready, how long the orphans lived.
Only processes carrying this daemon's marker are counted, so another vLLM run on the same
machine does not disturb the assertions.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from llm_supervisor.process.tree import ProcRef

from ..daemon_harness import DaemonProcess, fake_vllm, free_port, run_daemon, wait_until
from .support import EXAMPLE, cpu_vllm_service, vllm_processes, write_cpu_vllm_config

pytestmark = pytest.mark.vllm

START = 900.0  # one vLLM start: ~1 min alone, several when the machine is busy
FAST_FATAL = {"max_failures": 2, "backoff_initial": 0.1, "backoff_max": 0.5}
HEALTH = {"startup_timeout": "15m", "interval": "2s", "timeout": "1.5s", "failures": 3}


def spawned_sessions(daemon: DaemonProcess) -> set[int]:
    """Every engine the daemon started leads its own session (start_new_session)."""
    return {int(e["pid"]) for e in daemon.events("service.spawned")}


def ours(daemon: DaemonProcess, python: Path) -> list[psutil.Process]:
    """Live vLLM processes (API server, EngineCore, Worker, helpers) of this daemon.

    Found by session, not by the daemon's environment marker: vLLM retitles EngineCore and
    Worker with setproctitle, which overwrites /proc/PID/environ, so the marker is not
    readable there (the daemon reaches them through the process group and tree snapshots).
    """
    return in_sessions(python, spawned_sessions(daemon))


def in_sessions(python: Path, sessions: set[int]) -> list[psutil.Process]:
    found = []
    for proc in vllm_processes(python):
        try:
            if os.getsid(proc.pid) in sessions and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


@contextlib.contextmanager
def vllm_daemon(config_dir: Path, python: Path) -> Iterator[DaemonProcess]:
    """``run_daemon`` plus a net the harness lacks: its teardown finds processes by the
    marker, which vLLM's retitled processes no longer show, so kill them by session here."""
    sessions: set[int] = set()
    try:
        with run_daemon(
            config_dir, gateway=True, extra_args=["--no-watch"], wait_ready=False, timeout=60
        ) as daemon:
            try:
                yield daemon
            finally:
                sessions = spawned_sessions(daemon)
    finally:
        for proc in in_sessions(python, sessions):
            print(f"vllm-cpu: teardown kills leftover {proc.pid} {proc.info['name']}")
            with contextlib.suppress(psutil.Error):
                proc.kill()


def describe(procs: list[psutil.Process]) -> list[str]:
    return [f"{p.pid}:{p.info['name']}" for p in procs]


def cores(daemon: DaemonProcess, python: Path) -> list[psutil.Process]:
    return [p for p in ours(daemon, python) if (p.info["name"] or "").startswith("VLLM::Engine")]


def flag(pid: int, name: str) -> str:
    argv = psutil.Process(pid).cmdline()
    return argv[argv.index(name) + 1]


def service(daemon: DaemonProcess, name: str = "tiny") -> dict[str, Any]:
    return daemon.services()[name]


def wait_tiny(daemon: DaemonProcess, what: str, check: Any, timeout: float = START) -> float:
    """Wait until ``check(tiny's status)``; return the seconds it took."""
    started = time.monotonic()
    daemon.wait_status(lambda s: check(s["services"]["tiny"]), timeout, what)
    return time.monotonic() - started


def complete(gateway: str, prompt: str = "Hello") -> dict[str, Any]:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0}
    # The timeout covers an on-demand start behind the request.
    response = httpx.post(f"{gateway}/v1/completions", json=body, timeout=START)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    assert data["choices"] and isinstance(data["choices"][0]["text"], str), data
    return data


def report(label: str, seconds: float) -> None:
    print(f"\nvllm-cpu: {label}: {seconds:.1f} s", flush=True)


def reload_wait(daemon: DaemonProcess) -> str:
    result = daemon.cli("reload", "--wait", timeout=300)
    assert result.returncode == 0, result
    return result.stdout


@pytest.fixture
def config_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "cfg"


# -- one daemon: start, crash, reloads, stop -------------------------------------------------


@pytest.mark.timeout(3600)
def test_supervises_a_real_vllm(vllm_python: Path, tiny_model: Path, config_dir: Path) -> None:
    tiny = cpu_vllm_service(
        free_port(), python=vllm_python, model=tiny_model, health=HEALTH, restart=FAST_FATAL
    )
    services = {"tiny": tiny, "fake": fake_vllm(free_port(), "fake-model")}
    write_cpu_vllm_config(config_dir, services)
    with vllm_daemon(config_dir, vllm_python) as daemon:
        first = start_and_complete(daemon, vllm_python)
        fake_pid = service(daemon, "fake")["pid"]
        restarted = kill_api_server(daemon, vllm_python, first)
        reloaded = reload_max_model_len(daemon, services, config_dir, restarted)
        rollback_bad_max_model_len(daemon, services, config_dir, reloaded)
        assert service(daemon, "fake")["pid"] == fake_pid, "the fake service was restarted"
        stopped = daemon.cli("stop", "tiny", timeout=300)
        assert stopped.returncode == 0, stopped
        assert service(daemon)["state"] == "stopped"
        assert ours(daemon, vllm_python) == [], describe(ours(daemon, vllm_python))
        assert service(daemon, "fake")["pid"] == fake_pid


def start_and_complete(daemon: DaemonProcess, python: Path) -> int:
    took = wait_tiny(daemon, "tiny ready", lambda s: s["state"] == "ready")
    report("boot start to ready", took)
    daemon.wait_ready(["fake"])
    tiny = service(daemon)
    # ready means vLLM's /v1/models lists the served name (the daemon's probe); look too.
    models = httpx.get(f"http://127.0.0.1:{tiny['port']}/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert flag(tiny["pid"], "--max-model-len") == "1024"
    complete(daemon.gateway_url)
    assert len(cores(daemon, python)) == 1
    pid: int = tiny["pid"]
    return pid


def kill_api_server(daemon: DaemonProcess, python: Path, api: int) -> int:
    """kill -9 of the API server: the orphans (EngineCore, Worker, ...) must be swept."""
    orphans = {ProcRef.of(p) for p in psutil.Process(api).children(recursive=True)}
    names = {p.name() for p in psutil.Process(api).children(recursive=True)}
    assert any(n.startswith("VLLM::Engine") for n in names), names
    os.kill(api, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: all(ref.alive() is None for ref in orphans), 120, "orphans swept")
    report(
        f"orphans {sorted(names)} lived after kill -9 of the API server", time.monotonic() - killed
    )
    wait_tiny(
        daemon, "tiny ready again", lambda s: s["state"] == "ready" and s["pid"] not in (None, api)
    )
    report("kill -9 to ready again", time.monotonic() - killed)
    tiny = service(daemon)
    assert tiny["restarts_by_reason"].get("crash") == 1, tiny
    assert tiny["last_exit"]["signal"] == signal.SIGKILL, tiny["last_exit"]
    assert len(cores(daemon, python)) == 1, describe(ours(daemon, python))
    complete(daemon.gateway_url)
    pid: int = tiny["pid"]
    return pid


def reload_max_model_len(
    daemon: DaemonProcess, services: dict[str, Any], config_dir: Path, old: int
) -> int:
    services["tiny"]["args"] = {**services["tiny"]["args"], "max-model-len": 512}
    write_cpu_vllm_config(config_dir, services)
    out = reload_wait(daemon)
    assert "tiny" in out and "fake" not in out, out
    took = wait_tiny(
        daemon, "tiny ready with 512", lambda s: s["state"] == "ready" and s["pid"] != old
    )
    report("reload (max-model-len 1024 -> 512) to ready", took)
    tiny = service(daemon)
    assert flag(tiny["pid"], "--max-model-len") == "512"
    assert tiny["restarts_by_reason"].get("reload") == 1, tiny
    pid: int = tiny["pid"]
    return pid


def rollback_bad_max_model_len(
    daemon: DaemonProcess, services: dict[str, Any], config_dir: Path, good: int
) -> None:
    services["tiny"]["args"] = {**services["tiny"]["args"], "max-model-len": 4096}
    write_cpu_vllm_config(config_dir, services)
    reload_wait(daemon)
    started = time.monotonic()
    wait_tiny(
        daemon,
        "tiny rolled back and ready",
        lambda s: (
            (s["degraded"] or "").startswith("rolled back")
            and s["state"] == "ready"
            and s["pid"] != good
        ),
    )
    report("bad reload (4096 > 2048) to rolled back and ready", time.monotonic() - started)
    tiny = service(daemon)
    assert tiny["last_exit"]["cause"] == "max_model_len_too_large", tiny["last_exit"]
    assert "2048" in tiny["last_exit"]["hint"], tiny["last_exit"]
    assert "max_model_len_too_large" in tiny["degraded"]
    assert flag(tiny["pid"], "--max-model-len") == "512"
    assert [e["service"] for e in daemon.events("reload.rollback")] == ["tiny"]
    complete(daemon.gateway_url)


# -- another daemon: keep_alive idle stop, on-demand start, shutdown ---------------------------


def write_policy(config_dir: Path, rules: list[dict[str, Any]]) -> None:
    policy = yaml.safe_load((EXAMPLE / "policy.yaml").read_text())
    policy["keep_alive"]["rules"] = rules
    (config_dir / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))


@pytest.mark.timeout(2400)
def test_idle_stop_on_demand_start_and_shutdown(
    vllm_python: Path, tiny_model: Path, config_dir: Path
) -> None:
    tiny = cpu_vllm_service(
        free_port(), python=vllm_python, model=tiny_model, health=HEALTH, start="on-demand"
    )
    write_cpu_vllm_config(config_dir, {"tiny": tiny})
    write_policy(config_dir, [{"match": "tiny", "keep_alive": "5s"}])
    with vllm_daemon(config_dir, vllm_python) as daemon:
        daemon.wait_ready()
        assert service(daemon)["state"] == "stopped"
        assert ours(daemon, vllm_python) == []
        started = time.monotonic()
        complete(daemon.gateway_url)
        report(
            "on-demand start through the gateway (request to answer)", time.monotonic() - started
        )
        served = time.monotonic()
        wait_tiny(daemon, "idle stop", lambda s: s["state"] == "stopped", timeout=120)
        report(
            "last request to idle stop (keep_alive 5s, idle check every 10s)",
            time.monotonic() - served,
        )
        assert [e["service"] for e in daemon.events("service.idle_stop")] == ["tiny"]
        assert ours(daemon, vllm_python) == [], describe(ours(daemon, vllm_python))
        # A long keep_alive again, so the idle check cannot race the shutdown below.
        write_policy(config_dir, [])
        reload_wait(daemon)
        complete(daemon.gateway_url)
        assert service(daemon)["state"] == "ready"
        assert len(cores(daemon, vllm_python)) == 1
        daemon.signal(signal.SIGTERM)
        sent = time.monotonic()
        daemon.proc.wait(120)
        report("SIGTERM to daemon exit with a ready vLLM", time.monotonic() - sent)
        assert daemon.proc.returncode == 0, daemon.log_tail()
        left = ours(daemon, vllm_python)
        assert left == [], describe(left)
