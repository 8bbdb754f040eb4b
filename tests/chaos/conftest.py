"""Shared pieces of the chaos tests: profiles of fake engines, a daemon on a given state dir.

Every test runs the real daemon as a subprocess (tests/daemon_harness.py) and attacks it
from outside; teardown kills every process that carries the daemon's marker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llm_supervisor.process.tree import ProcRef, find_marked, kill_refs
from tests.daemon_harness import CLI, DaemonProcess, clean_env, fake_vllm, free_port

# Restart at once after a ready run dies, and never give up: the attacks below kill engines
# far more often than any real restart policy would tolerate.
TIRELESS = {"max_failures": 100000, "window": 1, "backoff_initial": 0.05, "backoff_max": 0.2}


def distinct_ports(n: int) -> list[int]:
    """``n`` different free loopback ports, none handed out before in this run."""
    return [free_port() for _ in range(n)]


def engines(n: int, *flags: str, prefix: str = "svc", **spec: Any) -> dict[str, dict[str, Any]]:
    """``n`` fake vLLM services with distinct ports, each run with ``flags``."""
    return {
        f"{prefix}{i:02d}": fake_vllm(port, f"{prefix}-model-{i:02d}", *flags, **dict(spec))
        for i, port in enumerate(distinct_ports(n))
    }


def marked(daemon: DaemonProcess) -> set[ProcRef]:
    """Every living process that carries this daemon's marker."""
    return {r for r in find_marked(daemon.marker_prefix, prefix=True) if r.alive()}


def live_tree_pids(status: dict[str, Any]) -> set[int]:
    return {pid for svc in status["services"].values() for pid in svc["pids"]}


@dataclass
class ChaosDaemon(DaemonProcess):
    control_dir: Path | None = None  # the control socket's dir, when not the state dir

    @property
    def control(self) -> str:
        return f"unix:{(self.control_dir or self.state_dir) / 'control.sock'}"


@contextlib.contextmanager
def daemon_on(
    config_dir: Path,
    state_dir: Path,
    *,
    extra_args: Sequence[str] = (),
    log_dir: Path | None = None,
    control_dir: Path | None = None,
    wait_ready: bool = True,
    timeout: float = 60.0,
) -> Iterator[ChaosDaemon]:
    """Like run_daemon, but on a state dir the caller owns (a second daemon reuses it).

    Teardown SIGKILLs the daemon only (the caller decides what its engines must survive);
    ``kill_leftovers`` cleans up the marked processes at the end of a test.
    """
    logs = log_dir or state_dir / "logs"
    argv = [
        *CLI, "run", "--config-dir", str(config_dir), "--state-dir", str(state_dir),
        "--log-dir", str(logs), "--control", f"unix:{(control_dir or state_dir) / 'control.sock'}",
        "--gateway", "off", "--log-format", "json", "--shutdown-timeout", "10", *extra_args,
    ]  # fmt: skip
    env = clean_env()
    out_dir = control_dir or state_dir
    stderr_path = out_dir / f"daemon-{len(list(out_dir.glob('daemon-*')))}.stderr"
    with stderr_path.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out)
    daemon = ChaosDaemon(proc, config_dir, state_dir, logs, stderr_path, None, env,
                         control_dir=control_dir)  # fmt: skip
    try:
        daemon._wait_control(timeout)
        if wait_ready:
            daemon.wait_ready(timeout=timeout)
        yield daemon
    except BaseException:
        print(f"--- daemon stderr (tail) ---\n{daemon.log_tail(60)}")
        raise
    finally:
        if daemon._client is not None:
            daemon._client.close()
            daemon._client = None
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short state dir (the control socket lives in it); marked processes die with it."""
    path = Path(tempfile.mkdtemp(prefix="chaos-", dir="/tmp"))
    yield path
    kill_refs(find_marked(f"{path.resolve()}::", prefix=True))
    if os.environ.get("KEEP_DAEMON_STATE") is None:
        shutil.rmtree(path, ignore_errors=True)


def sigkill(ref: ProcRef) -> bool:
    """SIGKILL ``ref`` if it is still that process; True if a signal was sent."""
    proc = ref.alive()
    if proc is None:
        return False
    try:
        os.kill(ref.pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs mounted on ``path`` (root only); skips the test where mount fails."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
