"""Gateway overhead against direct access and against nginx, in one run.

Upstream: a fast asyncio keep-alive responder (not the fake engine). Load: wrk (Debian
package) at 1 and 64 connections; plus time to first streamed chunk with a raw socket.
Needs ``nginx`` and ``wrk`` on PATH (``apt-get install -y nginx wrk``).

    .venv/bin/python bench/gateway_bench.py [--seconds 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BODY = b'{"version":"0.12.0"}'
STREAM_GAP = 0.02  # upstream pause after the first chunk of a streamed answer


class Responder(asyncio.Protocol):
    """Answers every request on a keep-alive connection; paths with 'stream' are chunked."""

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
            self.buffer = rest[length:]
            if b"stream" in head.split(b"\r\n", 1)[0]:
                asyncio.get_running_loop().create_task(self._stream())
            else:
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
                )

    async def _stream(self) -> None:
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\n\r\n" % (len(BODY) + 1, BODY)
        )
        await asyncio.sleep(STREAM_GAP)
        self.transport.write(b"%x\r\n%s\n\r\n0\r\n\r\n" % (len(BODY) + 1, BODY))


async def run_upstream(port: int) -> None:
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

    await Gateway(Backend()).serve("127.0.0.1", port, loops=False)


NGINX = """daemon off; worker_processes 1; error_log {d}/error.log; pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};
  upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_buffering off; }} }} }}
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


def wrk(port: int, conns: int, seconds: int) -> dict[str, float]:
    threads = min(conns, 2)
    url = f"http://127.0.0.1:{port}/api/version"
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "p99": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
    }


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def first_chunk_ms(port: int, samples: int = 200) -> float:
    """Median time from sending a request to the first body chunk of a streamed answer."""
    times = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        request = b"GET /api/stream HTTP/1.1\r\nHost: localhost\r\n\r\n"  # Host checked on loopback
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
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--role", choices=["upstream", "gateway"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        asyncio.run(run_upstream(args.port))
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
            sys.exit(f"{tool} not found: apt-get install -y nginx wrk")
    compare(args.seconds, args.json)


def compare(seconds: int, json_out: Path | None = None) -> None:
    up, gw, ng = free_port(), free_port(), free_port()
    me = [sys.executable, __file__]
    procs = [subprocess.Popen([*me, "--role", "upstream", "--port", str(up)])]
    procs.append(
        subprocess.Popen([*me, "--role", "gateway", "--port", str(gw), "--upstream", str(up)])
    )
    tmp = tempfile.mkdtemp(prefix="gwbench-")
    Path(tmp, "nginx.conf").write_text(NGINX.format(d=tmp, up=up, port=ng))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs.append(
        subprocess.Popen([nginx, "-c", f"{tmp}/nginx.conf", "-p", tmp], stderr=subprocess.DEVNULL)
    )
    try:
        for port in (up, gw, ng):
            wait_port(port)
        numbers = report({"direct": up, "nginx": ng, "gateway": gw}, seconds)
        if json_out is not None:
            json_out.write_text(json.dumps(numbers, indent=2))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def report(targets: dict[str, int], seconds: int) -> dict[str, object]:
    results: dict[tuple[str, int], dict[str, float]] = {}
    for conns in (1, 64):
        for name, port in targets.items():
            wrk(port, conns, 1)  # warm up connections and pools
            results[name, conns] = r = wrk(port, conns, seconds)
            print(
                f"{name:8} c={conns:<3} {r['rps']:>9.0f} req/s  p50 {r['p50']:7.3f} ms  "
                f"p99 {r['p99']:7.3f} ms",
                flush=True,
            )
    ttfb = {name: first_chunk_ms(port) for name, port in targets.items()}
    for name, value in ttfb.items():
        print(f"{name:8} first streamed chunk (median) {value:.3f} ms")
    added = results["gateway", 1]["p50"] - results["direct", 1]["p50"]
    share = results["gateway", 64]["rps"] / results["nginx", 64]["rps"]
    print(f"gateway adds {added:.3f} ms to p50 at 1 client (target <= 0.3 ms)")
    print(
        f"gateway/nginx req/s at 64 clients: {share:.2f} (target >= 0.20); "
        f"gateway p99 at 64: {results['gateway', 64]['p99']:.1f} ms (target < 25 ms)"
    )
    print(
        f"first chunk: gateway adds {ttfb['gateway'] - ttfb['direct']:.3f} ms, "
        f"nginx adds {ttfb['nginx'] - ttfb['direct']:.3f} ms"
    )
    wrk_rows = {f"{name}@{conns}": r for (name, conns), r in results.items()}
    return {"seconds": seconds, "wrk": wrk_rows, "first_chunk_ms": ttfb}


if __name__ == "__main__":
    main()
