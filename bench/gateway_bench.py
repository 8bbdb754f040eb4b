"""Gateway overhead against direct access and against nginx, in one run.

Upstream: a fast asyncio keep-alive responder (not the fake engine). Load: wrk (Debian
package). Every path (direct, nginx with one worker, the gateway) gets the same cells:

- ``GET /api/version`` at 1 and 64 connections (a pass-through route);
- ``POST /v1/chat/completions`` at 1 and 64 connections (routed by the body's model, so the
  gateway parses the JSON): the request that matters;
- streamed chat completions (SSE, one event per chunk, ``--events`` per answer, one every
  ``--event-gap`` seconds, as an engine sends tokens) at 200 connections;
- time to the first streamed chunk, with a raw socket.

Besides req/s and latency, each cell reports the CPU time the serving process used (from
/proc: utime + stime, nginx's worker included) per request, or per relayed event: unlike
req/s, that barely moves when other work shares the machine's cores. Needs ``nginx`` and
``wrk`` on PATH (``make deps-system``).

    .venv/bin/python bench/gateway_bench.py [--seconds 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BODY = b'{"version":"0.12.0"}'
CHAT = b'{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there."},"finish_reason":"stop"}]}'  # noqa: E501
EVENT = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"tok"}}]}\n\n'  # noqa: E501
STREAM_GAP = 0.02  # upstream pause after the first chunk of a /api/stream answer
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Responder(asyncio.Protocol):
    """Answers every request on a keep-alive connection.

    ``/api/stream``: two NDJSON chunks 20 ms apart (first-chunk latency); a body with
    ``"stream":true``: SSE events, one chunk each, ``gap`` apart; ``/count``: the number
    of SSE events sent so far; ``/probes``: when each ``GET /v1/models`` (the daemon's
    health probe of a ``command`` engine) arrived; anything else: a small JSON answer.
    """

    events = 3
    gap = 0.01
    sent = 0  # SSE events written, all connections
    probes: list[float] = []  # one list per process, on purpose

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            match = re.search(rb"(?i)content-length:\s*(\d+)", head)
            length = int(match.group(1)) if match else 0
            if len(rest) < length:
                return
            body, self.buffer = rest[:length], rest[length:]
            self._answer(head.split(b"\r\n", 1)[0], body)

    def _answer(self, line: bytes, body: bytes) -> None:
        if b"/api/stream" in line:
            asyncio.get_running_loop().create_task(self._ndjson())
        elif b'"stream":true' in body:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            self._event(self.events)
        elif b"/count" in line:
            self._reply(b"%d" % Responder.sent)
        elif line.startswith(b"GET /v1/models"):
            Responder.probes.append(time.time())
            self._reply(b'{"data": []}')
        elif b"/probes" in line:
            self._reply(json.dumps(Responder.probes).encode())
        else:
            self._reply(CHAT if body else BODY)

    def _reply(self, payload: bytes) -> None:
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
        )

    def _event(self, left: int) -> None:
        if self.transport.is_closing():
            return
        Responder.sent += 1
        last = b"0\r\n\r\n" if left == 1 else b""
        self.transport.write(b"%x\r\n%s\r\n%s" % (len(EVENT), EVENT, last))
        if left > 1:
            asyncio.get_running_loop().call_later(self.gap, self._event, left - 1)

    async def _ndjson(self) -> None:
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\n\r\n" % (len(BODY) + 1, BODY)
        )
        await asyncio.sleep(STREAM_GAP)
        self.transport.write(b"%x\r\n%s\n\r\n0\r\n\r\n" % (len(BODY) + 1, BODY))


async def run_upstream(port: int, events: int, gap: float) -> None:
    Responder.events, Responder.gap = events, gap
    server = await asyncio.get_running_loop().create_server(Responder, "127.0.0.1", port)
    await server.serve_forever()


async def run_gateway(port: int, upstream: int) -> None:
    from llm_supervisor.config.models import Config
    from llm_supervisor.gateway.app import Gateway

    spec = {"engine": "ollama", "port": upstream, "models": ["m:latest"]}
    config = Config.model_validate(
        {"services": {"o": {"name": "o", "spec": spec, "gpus": (), "source": "bench"}}}
    )

    class Backend:
        def config(self) -> Config:
            return config

        def lease(self, service: str) -> contextlib.nullcontext[None]:
            return contextlib.nullcontext()

        async def ensure_ready(self, service: str) -> None:
            return None

        async def stop_if_idle(self, service: str, idle_for: float) -> bool:
            return False

        def usage(self, service: str) -> None:
            return None

        def eta(self, service: str) -> float | None:
            return 0.0

        def states(self) -> dict[str, str]:
            return {"o": "ready"}

    await Gateway(Backend()).serve("127.0.0.1", port, loops=False)


NGINX = """daemon off; worker_processes 1; error_log {d}/error.log; pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};
  upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_buffering off; }} }} }}
"""
CHAT_REQUEST = '{"model":"m","messages":[{"role":"user","content":"Say hello."}]%s}'
WRK_POST = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '%s'
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its descendants still alive (nginx's worker)."""
    total = 0.0
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / CLK_TCK
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += cpu_seconds(int(child))
    return total


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def wrk(port: int, conns: int, seconds: float, path: str, script: Path | None) -> dict[str, float]:
    threads = min(conns, 2)
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency"]
    argv += ["-s", str(script)] if script else []
    out = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True
    ).stdout
    if re.search(r"Non-2xx|Socket errors", out):
        raise RuntimeError(f"wrk saw errors on port {port}{path}:\n{out}")
    return {
        "rps": float(_find(r"Requests/sec:\s+([\d.]+)", out)),
        "requests": int(_find(r"(\d+) requests in", out)),
        "p50": _ms(_find(r"50%\s+([\d.]+\w+)", out)),
        "p99": _ms(_find(r"99%\s+([\d.]+\w+)", out)),
    }


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"no {pattern!r} in wrk's output:\n{text}")
    return match.group(1)


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def events_sent(upstream: int) -> int:
    with socket.create_connection(("127.0.0.1", upstream)) as sock:
        sock.sendall(b"GET /count HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while not re.search(rb"\r\n\r\n\d+$", data):
            data += sock.recv(4096)
    return int(data.rsplit(b"\r\n\r\n", 1)[1])


def first_chunk_ms(port: int, samples: int = 200) -> float:
    """Median time from sending a request to the first body chunk of a streamed answer."""
    times = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        request = b"GET /api/stream HTTP/1.1\r\nHost: localhost\r\n\r\n"  # Host checked
        for _ in range(samples):
            start = time.perf_counter()
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data or BODY not in data:
                data += sock.recv(65536)
            times.append((time.perf_counter() - start) * 1000)
            while not data.endswith(b"0\r\n\r\n"):
                data += sock.recv(65536)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description="gateway vs direct vs nginx")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--events", type=int, default=50, help="SSE events per streamed answer")
    parser.add_argument("--event-gap", type=float, default=0.01, help="seconds between events")
    parser.add_argument("--only", help="comma-separated cells: get,post,sse,ttfb")
    parser.add_argument("--repeat", type=int, default=3, help="runs per many-client cell")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--role", choices=["upstream", "gateway"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        import uvloop  # the upstream must not be the bottleneck of the streaming cell

        uvloop.run(run_upstream(args.port, args.events, args.event_gap))
        return
    if args.role == "gateway":
        # As commands/run.py runs the daemon: the GC tuned after the imports, and uvloop.
        import uvloop

        import llm_supervisor.gateway.app  # noqa: F401  (imported before the freeze)
        from llm_supervisor.commands.run import tune_gc

        tune_gc()
        uvloop.run(run_gateway(args.port, args.upstream))
        return
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} not found: make deps-system (apt-get install -y nginx wrk)")
    cells = set((args.only or "get,post,sse,ttfb").split(","))
    compare(args, cells)


def compare(args: argparse.Namespace, cells: set[str]) -> None:
    up, gw, ng = free_port(), free_port(), free_port()
    me = [sys.executable, __file__]
    stream = ["--events", str(args.events), "--event-gap", str(args.event_gap)]
    procs = [subprocess.Popen([*me, "--role", "upstream", "--port", str(up), *stream])]
    tmp = Path(tempfile.mkdtemp(prefix="gwbench-"))
    with (tmp / "gateway.log").open("wb") as log:  # 200 hang-ups per streaming cell: logged
        gateway = [*me, "--role", "gateway", "--port", str(gw), "--upstream", str(up)]
        procs.append(subprocess.Popen(gateway, stdout=log, stderr=log))
    (tmp / "nginx.conf").write_text(NGINX.format(d=tmp, up=up, port=ng))
    (tmp / "post.lua").write_text(WRK_POST % (CHAT_REQUEST % ""))
    (tmp / "sse.lua").write_text(WRK_POST % (CHAT_REQUEST % ',"stream":true'))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs.append(
        subprocess.Popen([nginx, "-c", f"{tmp}/nginx.conf", "-p", tmp], stderr=subprocess.DEVNULL)
    )
    try:
        for port in (up, gw, ng):
            wait_port(port)
        targets = {"direct": (up, procs[0].pid), "nginx": (ng, procs[2].pid)}
        targets["gateway"] = (gw, procs[1].pid)
        numbers = Bench(targets, up, args, tmp).run(cells)
        if args.json is not None:
            args.json.write_text(json.dumps(numbers, indent=2))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


Row = dict[str, Any]  # one cell: req/s, latency, CPU per unit, load


class Bench:
    def __init__(
        self,
        targets: dict[str, tuple[int, int]],
        upstream: int,
        args: argparse.Namespace,
        tmp: Path,
    ) -> None:
        self.targets, self.upstream, self.args, self.tmp = targets, upstream, args, tmp

    def run(self, cells: set[str]) -> dict[str, object]:
        out: dict[str, object] = {"seconds": self.args.seconds, "loadavg_before": loadavg()}
        out["repeat"] = self.args.repeat
        if "get" in cells:
            out["wrk"] = self.wrk_cells("/api/version", None)
        if "post" in cells:
            out["post"] = self.wrk_cells("/v1/chat/completions", self.tmp / "post.lua")
        if "sse" in cells:
            out["sse"] = self.sse_cells()
        if "ttfb" in cells:
            out["first_chunk_ms"] = ttfb = {
                n: first_chunk_ms(p) for n, (p, _) in self.targets.items()
            }
            print(
                "first streamed chunk (median): "
                + ", ".join(f"{n} {v:.3f} ms" for n, v in ttfb.items())
            )
        out["loadavg_after"] = loadavg()
        print(f"load average before / after: {out['loadavg_before']} / {out['loadavg_after']}")
        return out

    def wrk_cells(self, path: str, script: Path | None) -> dict[str, Row]:
        rows: dict[str, Row] = {}
        for conns in (1, 64):

            def run(port: int, pid: int, conns: int = conns) -> Row:
                wrk(port, conns, 1, path, script)  # warm up connections and pools
                cpu = cpu_seconds(pid)
                r = wrk(port, conns, self.args.seconds, path, script)
                r["cpu_us"] = (cpu_seconds(pid) - cpu) / r["requests"] * 1e6
                return r

            rows |= self.cells(f"{path} c={conns}", conns, run, "request")
        self._ratios(path, rows, 64)
        return rows

    def sse_cells(self, conns: int = 200) -> dict[str, Row]:
        script = self.tmp / "sse.lua"

        def run(port: int, pid: int) -> Row:
            wrk(port, conns, 1, "/v1/chat/completions", script)
            cpu, sent = cpu_seconds(pid), events_sent(self.upstream)
            r = wrk(port, conns, self.args.seconds, "/v1/chat/completions", script)
            r["events"] = events = events_sent(self.upstream) - sent
            r["events_per_s"] = events / self.args.seconds
            r["cpu_us"] = (cpu_seconds(pid) - cpu) / max(1, events) * 1e6
            return r

        rows = self.cells(f"SSE c={conns}", conns, run, "event")
        self._ratios("SSE", rows, conns)
        return rows

    def cells(
        self, label: str, conns: int, run: Callable[[int, int], Row], unit: str
    ) -> dict[str, Row]:
        """Each path ``--repeat`` times (once at one connection), the paths taking turns so
        that a burst of other work on the machine hits all of them; the run with the median
        CPU per unit stands for the path."""
        runs: dict[str, list[Row]] = {name: [] for name in self.targets}
        for _ in range(self.args.repeat if conns > 1 else 1):
            for name, (port, pid) in self.targets.items():
                r = run(port, pid)
                r["load1"] = float(loadavg().split()[0])
                runs[name].append(r)
                rate = r.get("events_per_s", r["rps"])
                print(
                    f"{label:28} {name:8} {rate:>8.0f}/s  p50 {r['p50']:7.3f} ms  "
                    f"p99 {r['p99']:7.3f} ms  CPU {r['cpu_us']:6.1f} us/{unit}  "
                    f"load {r['load1']:.2f}",
                    flush=True,
                )
        rows = {}
        for name, results in runs.items():
            row = sorted(results, key=lambda r: r["cpu_us"])[len(results) // 2]
            rows[f"{name}@{conns}"] = {**row, "cpu_us_runs": [r["cpu_us"] for r in results]}
        return rows

    def _ratios(self, what: str, rows: dict[str, Row], conns: int) -> None:
        gw, ng = rows[f"gateway@{conns}"], rows[f"nginx@{conns}"]
        print(
            f"{what} at {conns}: gateway/nginx CPU per unit {gw['cpu_us'] / ng['cpu_us']:.2f}x "
            f"(medians), req/s {gw['rps'] / ng['rps']:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
