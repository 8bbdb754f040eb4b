"""Pins load when their Ollama service becomes ready, not at the reconcile loop's next tick.

Through the real daemon with the fake Ollama. The reconcile loop keeps its 15 s period, so a
pin that shows up within about a second of ready was loaded by the ready listener; after a
kill -9 the loop is certainly asleep, and the restarted Ollama must get its pin again.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from .daemon_harness import (
    DaemonProcess,
    fake_ollama,
    free_port,
    profile_text,
    run_daemon,
    wait_until,
    write_atomic,
)

PIN = "gpt-oss:120b"
PROMPT_AFTER_READY = 1.5  # seconds: "within ~1 s of ready", with room for a loaded CI box


def _loaded(port: int) -> list[str]:
    try:
        stats = httpx.get(f"http://127.0.0.1:{port}/_fake/stats", timeout=2).json()
    except httpx.HTTPError:
        return []
    return list(stats["loaded"])


def _ready_at(daemon: DaemonProcess, count: int) -> float:
    """Wall time of the ``count``-th transition of service ``ollama`` to ready."""
    readies = [
        e for e in daemon.events("service.state")
        if e.get("service") == "ollama" and e.get("new") == "ready"
    ]  # fmt: skip
    assert len(readies) >= count, readies
    return datetime.fromisoformat(readies[count - 1]["timestamp"]).timestamp()


def _setup(config_dir: Path, port: int) -> None:
    services: dict[str, Any] = {"ollama": fake_ollama(port, [PIN, "llama3.2:3b"])}
    write_atomic(config_dir / "gpu0.yaml", profile_text(services))
    write_atomic(config_dir / "policy.yaml", yaml.safe_dump({"pin": [PIN]}))


def test_pin_loads_at_ready_and_again_after_kill_9(tmp_path: Path) -> None:
    port = free_port()
    _setup(tmp_path, port)
    with run_daemon(tmp_path, gateway=True, wait_ready=False) as daemon:
        wait_until(lambda: PIN in _loaded(port) or None, 10, "pin loaded after the first ready")
        loaded_at = time.time()
        assert loaded_at - _ready_at(daemon, 1) < PROMPT_AFTER_READY

        first_pid = daemon.pids()["ollama"]
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        wait_until(
            lambda: daemon.pids()["ollama"] not in (None, first_pid) or None, 15,
            "ollama restarted",
        )  # fmt: skip
        wait_until(lambda: PIN in _loaded(port) or None, 10, "pin loaded after the restart")
        assert time.time() - _ready_at(daemon, 2) < PROMPT_AFTER_READY
        reasons = [e.get("reason") for e in daemon.events("keepalive.reconcile")]
        assert reasons.count("pinned but not loaded") >= 2


def test_start_wait_returns_with_the_pins_loaded(tmp_path: Path) -> None:
    port = free_port()
    _setup(tmp_path, port)
    profile = yaml.safe_load((tmp_path / "gpu0.yaml").read_text())
    profile["services"]["ollama"]["start"] = "on-demand"
    # The fake takes a while to load a model: --wait must include that, not just ready.
    profile["services"]["ollama"]["command"] += ["--load-seconds", "0.5"]
    write_atomic(tmp_path / "gpu0.yaml", yaml.safe_dump(profile))
    with run_daemon(tmp_path, gateway=True) as daemon:
        assert _loaded(port) == []
        result = daemon.cli("start", "ollama", "--wait")
        assert result.returncode == 0, result.stderr
        assert PIN in _loaded(port)
