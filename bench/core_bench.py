"""Supervision latency of the real daemon: crash → restart spawned, engine serving → ready.

Runs ``llm-supervisor run`` on a temporary config with one fake engine
(tests/fakes/fake_engine.py, wrapped to print the wall time right before it starts serving),
then repeats: kill -9 the ready engine, and measure from the daemon's JSON log

1. death → respawn: the kill (taken right before ``os.kill``) to the ``service.spawned``
   event of the next engine (target: median under 50 ms; supervisord polls once a second);
2. serving → ready: the engine's own "serving" timestamp to the ``service.state … ready``
   event (target: median under 250 ms; llama-swap polls once a second).

With ``--gateway-load N`` the daemon's gateway is kept saturated meanwhile (wrk, N
connections of ``POST /v1/chat/completions`` to a fast ``command`` engine, the responder of
bench/gateway_bench.py), and a third service, probed every 0.25 s, records when its probes
arrive: supervision must not wait behind the gateway (target: respawn median under 50 ms,
probe intervals within a few ms of 0.25 s).

Standard library only (and wrk for the load); uses the checkout's .venv if it exists.

    python bench/core_bench.py [--runs 20] [--startup-delay 0.3] [--gateway-load 64] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
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
RESPONDER = REPO / "bench" / "gateway_bench.py"
PROBE_INTERVAL = 0.25  # the probed service's health interval under gateway load
WRK_POST = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"fast","messages":[{"role":"user","content":"Say hello."}]}'
"""
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


def responder(python: str, port: int, interval: float) -> dict[str, Any]:
    """A fast ``command`` service: the gateway's load goes to it, or it counts probes."""
    command = [python, str(RESPONDER), "--role", "upstream", "--port", str(port)]
    health = {"interval": interval, "timeout": min(1.0, interval * 0.8), "startup_timeout": 30}
    return {"engine": "command", "model": f"m{port}", "port": port, "command": command,
            "health": health}  # fmt: skip


def write_config(
    config_dir: Path, python: str, startup_delay: float, extra: dict[str, Any] | None = None
) -> None:
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
    profile = {"gpu": "cpu", "services": {"bench": service, **(extra or {})}}
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


def is_state(new: str, service: str = "bench") -> Accept:
    return lambda e: (
        e.get("event") == "service.state" and e.get("new") == new and e.get("service") == service
    )


def is_spawn(e: dict[str, Any]) -> bool:
    return e.get("event") == "service.spawned" and e.get("service") == "bench"


class GatewayLoad:
    """The gateway kept busy by wrk while supervision is measured, and the probe recorder."""

    def __init__(self, clients: int, workdir: Path) -> None:
        self.clients, self.workdir = clients, workdir
        self.gateway, self.fast, self.probed = free_port(), free_port(), free_port()
        self.wrk: subprocess.Popen[bytes] | None = None
        self.window: tuple[float, float] = (0.0, 0.0)
        self.intervals: list[float] = []

    def services(self, python: str) -> dict[str, Any]:
        fast = {**responder(python, self.fast, 5), "served_name": "fast"}
        return {"fast": fast, "probed": responder(python, self.probed, PROBE_INTERVAL)}

    def start(self) -> None:
        script = self.workdir / "post.lua"
        script.write_text(WRK_POST)
        url = f"http://127.0.0.1:{self.gateway}/v1/chat/completions"
        argv = ["wrk", "-t2", f"-c{self.clients}", "-d3600s", "-s", str(script), url]
        self.wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(1.0)  # saturated before the first kill
        self.window = (time.time(), 0.0)

    def stop(self) -> str:
        self.window = (self.window[0], time.time())
        if self.wrk is None:
            return ""
        self.wrk.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
        out = self.wrk.communicate(timeout=30)[0].decode(errors="replace")
        return " ".join(re.findall(r"Requests/sec:\s+\S+|Non-2xx.*|Socket errors.*", out))

    def probe_intervals(self, window: tuple[float, float]) -> list[float]:
        """Seconds between consecutive probes of the probed service within ``window``."""
        with socket.create_connection(("127.0.0.1", self.probed)) as sock:
            sock.sendall(b"GET /probes HTTP/1.1\r\nHost: localhost\r\n\r\n")
            data = b""
            while not data.endswith(b"]"):
                data += sock.recv(1 << 20)
        times = [
            t for t in json.loads(data.split(b"\r\n\r\n", 1)[1]) if window[0] <= t <= window[1]
        ]
        return [b - a for a, b in itertools.pairwise(times)]


def measure(
    runs: int, startup_delay: float, workdir: Path, load: GatewayLoad | None = None
) -> tuple[list[float], list[float]]:
    python = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))
    write_config(workdir / "config", python, startup_delay, load.services(python) if load else None)
    log_path = workdir / "daemon.log"
    gateway = f"127.0.0.1:{load.gateway}" if load else "off"
    argv = [
        python, "-m", "llm_supervisor.cli", "run", "--config-dir", str(workdir / "config"),
        "--state-dir", str(workdir / "state"), "--log-dir", str(workdir / "logs"),
        "--control", f"unix:{workdir / 'control.sock'}", "--gateway", gateway, "--no-watch",
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
        if load is not None:
            for name in ("fast", "probed"):
                log.wait(is_state("ready", name), 0, proc)
            load.start()
        for _ in range(runs):
            spawned = [e for e in log.events if is_spawn(e)][-1]
            pid = int(spawned["pid"])
            ready_ms.append((stamp(ready) - serving_time(workdir / "logs/bench.log", pid)) * 1e3)
            time.sleep(0.1)  # past stable_after, so the kill is a first failure
            index = len(log.events)
            killed_at = time.time()
            os.kill(pid, signal.SIGKILL)
            respawn = log.wait(is_spawn, index, proc)
            respawn_ms.append((stamp(respawn) - killed_at) * 1e3)
            ready = log.wait(is_state("ready"), log.events.index(respawn), proc)
        if load is not None:
            print(f"gateway load: {load.stop()}")
            load.intervals = load.probe_intervals(load.window)
    finally:
        if load is not None and load.wrk is not None and load.wrk.poll() is None:
            load.wrk.kill()
            load.wrk.wait()
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


def report_probes(intervals: list[float]) -> None:
    if not intervals:
        print("probes: none recorded during the load")
        return
    late = sorted((i - PROBE_INTERVAL) * 1e3 for i in intervals)
    print(
        f"health probes every {PROBE_INTERVAL} s under load (n={len(intervals)}): lateness "
        f"median {statistics.median(late):.1f} ms, p90 {late[int(0.9 * (len(late) - 1))]:.1f} ms, "
        f"max {late[-1]:.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--startup-delay", type=float, default=0.3, help="fake engine load time")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers (ms) here")
    parser.add_argument(
        "--gateway-load", type=int, default=0, metavar="N", help="keep the gateway saturated"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="core-bench-"))
    load = GatewayLoad(args.gateway_load, workdir) if args.gateway_load else None
    load_avg = Path("/proc/loadavg").read_text().split()[0]
    respawn_ms, ready_ms = measure(args.runs, args.startup_delay, workdir, load)
    print(f"llm-supervisor core bench: {args.runs} kill -9 cycles of one fake vLLM engine")
    if load is not None:
        print(f"while {load.clients} clients keep the gateway saturated (load average {load_avg})")
    report("death -> restart spawned (supervisord: 1 s poll)", respawn_ms, 50.0)
    report("engine serving -> state ready (llama-swap: 1 s poll)", ready_ms, 250.0)
    raw: dict[str, Any] = {
        "respawn_ms": respawn_ms, "ready_ms": ready_ms, "poll_baseline_ms": POLL_BASELINE_MS
    }  # fmt: skip
    if load is not None:
        intervals = load.intervals
        raw.update(gateway_clients=load.clients, probe_intervals_s=intervals, loadavg=load_avg)
        report_probes(intervals)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))
    if args.keep:
        print(f"work dir: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
