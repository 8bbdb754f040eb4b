"""The real daemon as a subprocess, for end-to-end tests (and bench scripts).

``run_daemon(config_dir)`` starts ``llm-supervisor run`` with its own short state dir (the
control socket lives there: Unix socket paths are limited to 107 bytes), waits until the
control API answers (and, by default, until every boot service is ready), and in teardown
stops the daemon and kills every process that carries its marker, whatever happened.

Profile helpers write real YAML files; ``write_atomic`` saves like vim or an IDE does.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from llm_supervisor.control.client import ControlClient
from llm_supervisor.errors import DaemonUnreachableError
from llm_supervisor.process.tree import find_marked, kill_refs

FAKES = Path(__file__).parent / "fakes"
FAKE_ENGINE = str(FAKES / "fake_engine.py")
FAKE_OLLAMA = str(FAKES / "fake_ollama.py")
CLI = [sys.executable, "-m", "llm_supervisor.cli"]
STEERING_ENV = ("LLM_SUPERVISOR_CONTROL", "LLM_SUPERVISOR_TOKEN_FILE", "NOTIFY_SOCKET",
                "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "NO_COLOR",
                "RUNTIME_DIRECTORY", "STATE_DIRECTORY", "LOGS_DIRECTORY")  # fmt: skip
T = TypeVar("T")


class WaitTimeout(AssertionError):
    pass


def wait_until(check: Callable[[], T | None], timeout: float = 15.0, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.02)
    raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what or check}; last={last!r}")


def read_events(path: Path, name: str | None = None) -> list[dict[str, Any]]:
    """The JSON-line events in a daemon log file, optionally only those named ``name``."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and (name is None or event.get("event") == name):
            found.append(event)
    return found


# -- config files ----------------------------------------------------------------------


def fast_health(**overrides: Any) -> dict[str, Any]:
    return {"interval": 0.6, "timeout": 0.5, "failures": 2, "startup_timeout": 15.0, **overrides}


def fake_vllm(port: int, model: str, *flags: str, **spec: Any) -> dict[str, Any]:
    """A profile entry running tests/fakes/fake_engine.py as a vLLM engine."""
    return {
        "engine": "vllm", "model": model, "port": port,
        "command": [sys.executable, FAKE_ENGINE, *flags],
        "health": fast_health(**spec.pop("health", {})), "stop_timeout": 3.0, **spec,
    }  # fmt: skip


def fake_ollama(port: int, models: Sequence[str], **spec: Any) -> dict[str, Any]:
    """A profile entry running tests/fakes/fake_ollama.py as an Ollama engine."""
    return {
        "engine": "ollama", "port": port, "models": list(models),
        "command": [sys.executable, FAKE_OLLAMA, "--port", str(port)],
        "health": fast_health(**spec.pop("health", {})), "stop_timeout": 3.0, **spec,
    }  # fmt: skip


def profile_text(services: Mapping[str, Any], gpu: Any = "cpu") -> str:
    return yaml.safe_dump({"gpu": gpu, "services": dict(services)}, sort_keys=False)


def write_atomic(path: Path, text: str) -> None:
    """Save as editors do: a temp file in the same directory, then rename over the target."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- the daemon --------------------------------------------------------------------------


@dataclass
class DaemonProcess:
    proc: subprocess.Popen[bytes]
    config_dir: Path
    state_dir: Path
    log_dir: Path
    stderr_path: Path
    gateway_port: int | None
    env: dict[str, str]
    _client: ControlClient | None = field(default=None, repr=False)

    @property
    def control(self) -> str:
        return f"unix:{self.state_dir / 'control.sock'}"

    @property
    def gateway_url(self) -> str:
        assert self.gateway_port is not None, "started with gateway=False"
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def marker_prefix(self) -> str:
        return f"{self.state_dir.resolve()}::"

    def client(self) -> ControlClient:
        if self._client is None:
            self._client = ControlClient(self.control)
        return self._client

    def status(self) -> dict[str, Any]:
        return self.client().status()

    def services(self) -> dict[str, dict[str, Any]]:
        services: dict[str, dict[str, Any]] = self.status()["services"]
        return services

    def pids(self) -> dict[str, int | None]:
        return {name: s["pid"] for name, s in self.services().items()}

    def reload_counts(self) -> dict[str, int]:
        counts: dict[str, int] = self.status()["reload"].get("counts") or {}
        return counts

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``llm-supervisor ARGS --control <ours>`` as a subprocess."""
        return subprocess.run(
            [*CLI, *args, "--control", self.control], env=self.env, capture_output=True,
            text=True, timeout=timeout,
        )  # fmt: skip

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_status(
        self, check: Callable[[dict[str, Any]], object], timeout: float = 15.0, what: str = ""
    ) -> dict[str, Any]:
        """Poll status until ``check(status)`` is truthy; return that status."""

        def probe() -> dict[str, Any] | None:
            self.assert_running()
            status = self.status()
            return status if check(status) else None

        return wait_until(probe, timeout, what)

    def wait_ready(self, names: Sequence[str] | None = None, timeout: float = 20.0) -> None:
        def ready(status: dict[str, Any]) -> bool:
            services = status["services"]
            wanted = names if names is not None else [
                n for n, s in services.items() if s["start"] == "boot"
            ]  # fmt: skip
            return all(services.get(n, {}).get("state") == "ready" for n in wanted)

        self.wait_status(ready, timeout, f"services ready: {names or 'all boot'}")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The daemon's structured log events so far (JSON lines on its stderr)."""
        return read_events(self.stderr_path, name)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])

    def assert_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_tail()}")

    def _wait_control(self, timeout: float) -> None:
        def answers() -> bool:
            self.assert_running()
            try:
                self.status()
            except DaemonUnreachableError:
                return False
            return True

        wait_until(answers, timeout, "the control socket")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL; then kill whatever still carries the daemon's marker."""
        self.stop_daemon_only(timeout)
        kill_refs(find_marked(self.marker_prefix, prefix=True))
        return self.proc.returncode

    def stop_daemon_only(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (it stops its engines), then SIGKILL; a dead daemon's engines stay."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in STEERING_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


_handed_out: set[int] = set()


def free_port() -> int:
    """A free port below the ephemeral range: the daemon binds it seconds later, and ports
    from ``bind(0)`` are what every other test (and the kernel) hands out meanwhile."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 32000)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


@contextlib.contextmanager
def run_daemon(
    config_dir: Path,
    *,
    gateway: bool = False,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    wait_control: bool = True,
    wait_ready: bool = True,
    timeout: float = 20.0,
    log_dir: Path | None = None,
    state_dir: Path | None = None,
    gateway_port: int | None = None,
    prefix: Sequence[str] = (),
) -> Iterator[DaemonProcess]:
    """Start ``llm-supervisor run`` on ``config_dir``; yield a handle; always clean up.

    ``gateway``: serve the gateway on a free port (``handle.gateway_url``), else ``off``.
    ``extra_args``: more ``run`` flags. ``env``: added to a cleaned environment (pass
    ``NOTIFY_SOCKET`` here). ``wait_control``: wait until the control API answers (False for
    a daemon expected to exit, e.g. on a bad config: ``handle.proc.wait()``). ``wait_ready``:
    also wait until every boot service is ready. ``state_dir`` (and ``gateway_port``): run on
    the caller's state dir, to hand it to a next daemon; the caller then owns its cleanup, and
    the engines of a daemon that was killed are left alone (a next daemon adopts them).
    ``prefix``: a wrapper command, e.g. ``["prlimit", "--nofile=400:400"]``.
    """
    own_state = state_dir is None
    state_dir = state_dir or Path(tempfile.mkdtemp(prefix="lsd-", dir="/tmp"))  # socket limit
    port = gateway_port or (free_port() if gateway else None)
    logs = log_dir or state_dir / "logs"
    argv = [
        *prefix, *CLI, "run", "--config-dir", str(config_dir), "--state-dir", str(state_dir),
        "--log-dir", str(logs), "--control", f"unix:{state_dir / 'control.sock'}",
        "--gateway", f"127.0.0.1:{port}" if port else "off", "--log-format", "json",
        "--shutdown-timeout", "10", *extra_args,
    ]  # fmt: skip
    environ = clean_env(env)
    stderr_path = state_dir / f"daemon-{len(list(state_dir.glob('daemon*.stderr')))}.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(argv, env=environ, stdout=stderr, stderr=stderr)
    daemon = DaemonProcess(proc, config_dir, state_dir, logs, stderr_path, port, environ)
    try:
        if wait_control:
            daemon._wait_control(timeout)
        if wait_control and wait_ready:
            daemon.wait_ready(timeout=timeout)
        yield daemon
    except BaseException:
        print(f"--- daemon stderr (tail) ---\n{daemon.log_tail(80)}")  # shown on failure
        raise
    finally:
        if own_state:
            daemon.stop()
        else:
            daemon.stop_daemon_only()
        if own_state and os.environ.get("KEEP_DAEMON_STATE") is None:
            shutil.rmtree(state_dir, ignore_errors=True)
