"""Supervision latency of the real daemon: crash → restart spawned, engine serving → ready.

Runs ``llm-supervisor run`` on a temporary config with one fake engine
(tests/fakes/fake_engine.py, wrapped to print the wall time right before it starts serving),
then repeats: kill -9 the ready engine, and measure from the daemon's JSON log

1. death → respawn: the kill (taken right before ``os.kill``) to the ``service.spawned``
   event of the next engine (target: median under 50 ms; supervisord polls once a second);
2. serving → ready: the engine's own "serving" timestamp to the ``service.state … ready``
   event (target: median under 250 ms; llama-swap polls once a second).

Standard library only; uses the checkout's .venv for the daemon if it exists.

    python bench/core_bench.py [--runs 20] [--startup-delay 0.3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FAKE_ENGINE = REPO / "tests" / "fakes" / "fake_engine.py"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
MARKER_ENV = "LLM_SUPERVISOR_OWNER"
POLL_BASELINE_MS = 1000.0  # supervisord and llama-swap look once a second
SERVING = "bench.serving_at="
Accept = Callable[[dict[str, Any]], bool]

# Runs the fake engine with serve_forever() patched to print the wall time first: the socket
# is listening at that moment and the first request is answered from then on.
WRAPPER = f"""
import runpy, sys, time
from http.server import ThreadingHTTPServer
path = sys.argv.pop(1)
serve = ThreadingHTTPServer.serve_forever
def timed(self, poll_interval=0.5):
    print("{SERVING}%.6f" % time.time(), flush=True)
    serve(self, poll_interval)
ThreadingHTTPServer.serve_forever = timed
sys.argv[0] = path
runpy.run_path(path, run_name="__main__")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(config_dir: Path, python: str, startup_delay: float) -> None:
    # JSON is YAML: no dependency needed to write the profile.
    command = [python, "-c", WRAPPER, str(FAKE_ENGINE), "--startup-delay", str(startup_delay)]
    service = {
        "engine": "vllm", "model": "bench", "port": free_port(), "command": command,
        "health": {"interval": 5, "timeout": 2, "startup_timeout": 30, "stable_after": 0.05},
        # Every kill is the first failure of a run that was ready: restart at once, never fatal.
        "restart": {"max_failures": 100000, "window": 1, "backoff_initial": 0.05},
        "stop_timeout": 2,
    }  # fmt: skip
    config_dir.mkdir(parents=True)
    profile = {"gpu": "cpu", "services": {"bench": service}}
    (config_dir / "cpu.yaml").write_text(json.dumps(profile, indent=1))


class DaemonLog:
    """The daemon's stderr (JSON lines), read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._offset = 0

    def poll(self) -> None:
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            try:
                self.events.append(json.loads(line))
            except ValueError:
                continue

    def wait(
        self, accept: Accept, start: int, proc: subprocess.Popen[bytes], timeout: float = 30.0
    ) -> dict[str, Any]:
        """First event from index ``start`` on that ``accept``s; polls every millisecond."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            for event in self.events[start:]:
                if accept(event):
                    return event
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = self.path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"daemon exited or timed out; log tail:\n{tail}")
            time.sleep(0.001)


def stamp(event: dict[str, Any]) -> float:
    when = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))
    return when.timestamp()


def serving_time(engine_log: Path, pid: int, timeout: float = 5.0) -> float:
    """The serving timestamp printed by engine ``pid`` (its first line names its pid)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = None
        for line in engine_log.read_text(errors="replace").splitlines():
            if line.startswith("fake engine pid="):
                current = int(line.split()[2].split("=")[1])
            elif line.startswith(SERVING) and current == pid:
                return float(line[len(SERVING) :])
        time.sleep(0.005)
    raise RuntimeError(f"no serving line for pid {pid} in {engine_log}")


def is_state(new: str) -> Accept:
    return lambda e: e.get("event") == "service.state" and e.get("new") == new


def measure(runs: int, startup_delay: float, workdir: Path) -> tuple[list[float], list[float]]:
    python = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))
    write_config(workdir / "config", python, startup_delay)
    log_path = workdir / "daemon.log"
    argv = [
        python, "-m", "llm_supervisor.cli", "run", "--config-dir", str(workdir / "config"),
        "--state-dir", str(workdir / "state"), "--log-dir", str(workdir / "logs"),
        "--control", f"unix:{workdir / 'control.sock'}", "--gateway", "off", "--no-watch",
        "--log-format", "json",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env)
    log = DaemonLog(log_path)
    respawn_ms: list[float] = []
    ready_ms: list[float] = []
    try:
        ready = log.wait(is_state("ready"), 0, proc)
        for _ in range(runs):
            spawned = [e for e in log.events if e.get("event") == "service.spawned"][-1]
            pid = int(spawned["pid"])
            ready_ms.append((stamp(ready) - serving_time(workdir / "logs/bench.log", pid)) * 1e3)
            time.sleep(0.1)  # past stable_after, so the kill is a first failure
            index = len(log.events)
            killed_at = time.time()
            os.kill(pid, signal.SIGKILL)
            respawn = log.wait(lambda e: e.get("event") == "service.spawned", index, proc)
            respawn_ms.append((stamp(respawn) - killed_at) * 1e3)
            ready = log.wait(is_state("ready"), log.events.index(respawn), proc)
    finally:
        stop(proc, workdir / "state")
    return respawn_ms, ready_ms


def stop(proc: subprocess.Popen[bytes], state_dir: Path) -> None:
    """SIGTERM the daemon; whatever carries our marker afterwards is killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    marker = f"{MARKER_ENV}={state_dir.resolve()}::".encode()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            continue


def report(title: str, values: list[float], target: float) -> None:
    ordered = sorted(values)
    median = statistics.median(ordered)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    spread = statistics.stdev(ordered) if len(ordered) > 1 else 0.0
    verdict = "ok" if median < target else "MISSED"
    print(f"{title} (n={len(values)}, target median < {target:.0f} ms: {verdict})")
    print(
        f"  median {median:7.1f} ms   p90 {p90:7.1f} ms   min {ordered[0]:7.1f} ms   "
        f"max {ordered[-1]:7.1f} ms   stdev {spread:6.1f} ms"
    )
    print(
        f"  vs a 1 s poll: worst case {POLL_BASELINE_MS:.0f} ms ({POLL_BASELINE_MS / median:.0f}x "
        f"the median), mean {POLL_BASELINE_MS / 2:.0f} ms ({POLL_BASELINE_MS / 2 / median:.0f}x)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--startup-delay", type=float, default=0.3, help="fake engine load time")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers (ms) here")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="core-bench-"))
    respawn_ms, ready_ms = measure(args.runs, args.startup_delay, workdir)
    print(f"llm-supervisor core bench: {args.runs} kill -9 cycles of one fake vLLM engine")
    report("death -> restart spawned (supervisord: 1 s poll)", respawn_ms, 50.0)
    report("engine serving -> state ready (llama-swap: 1 s poll)", ready_ms, 250.0)
    if args.json:
        raw = {"respawn_ms": respawn_ms, "ready_ms": ready_ms, "poll_baseline_ms": POLL_BASELINE_MS}
        args.json.write_text(json.dumps(raw, indent=2))
    if args.keep:
        print(f"work dir: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
