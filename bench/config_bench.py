"""Big config files: what `check` costs on the largest profile accepted (1 MiB), and whether
the gateway keeps answering while the daemon reloads one.

1. ``check``: ``load_config`` on a 1 MiB profile (~4,400 services) in-process (CPU and wall
   time, best and median of N), and ``llm-supervisor check --no-gpus`` as a subprocess
   (wall time and peak RSS).
2. Reload: the real daemon (``llm-supervisor run``, gateway on) with one on-demand service.
   A client thread sends ``GET /v1/models`` to the gateway every 10 ms over one keep-alive
   connection. After a 1 s baseline, a 1 MiB file is dropped into the watched directory:
   ``rejected`` (every service parses and validates, the last one takes a port already
   used, so nothing is applied: the stray-file case) or ``applied`` (valid: ~4,400
   on-demand services are added, none started). The latency of every request is recorded
   until the reload has finished plus 1 s. Target: no request delayed by more than 50 ms.

    .venv/bin/python bench/config_bench.py [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_supervisor.config.load import MAX_FILE_BYTES, load_config
from tests.bigconfig import big_profile
from tests.daemon_harness import (
    CLI,
    DaemonProcess,
    fake_vllm,
    free_port,
    profile_text,
    run_daemon,
    wait_until,
    write_atomic,
)

PING_EVERY = 0.010


def bench_check(runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        config_dir = Path(tmp)
        (config_dir / "gpu0.yaml").write_text(big_profile(MAX_FILE_BYTES), encoding="utf-8")
        size = (config_dir / "gpu0.yaml").stat().st_size
        cpu, wall = [], []
        for _ in range(runs):
            c0, w0 = time.process_time(), time.perf_counter()
            config, _ = load_config(config_dir)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        cli = []
        for _ in range(runs):
            w0 = time.perf_counter()
            done = subprocess.run(
                [*CLI, "check", "--no-gpus", "--config-dir", str(config_dir)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            cli.append(time.perf_counter() - w0)
            assert done.returncode == 0, done.stderr
        rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "file_bytes": size,
        "services": len(config.services),
        "load_config_cpu_s": {"best": min(cpu), "median": statistics.median(cpu)},
        "load_config_wall_s": {"best": min(wall), "median": statistics.median(wall)},
        "check_cli_wall_s": {"best": min(cli), "median": statistics.median(cli)},
        "check_cli_peak_rss_mib": round(rss_mib, 1),
    }


class Pinger(threading.Thread):
    """GET /v1/models every 10 ms; (time sent, latency) per request."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            next_at = time.perf_counter()
            while not self.stop.is_set():
                sent = time.perf_counter()
                client.get(self.url).raise_for_status()
                self.samples.append((sent, time.perf_counter() - sent))
                next_at += PING_EVERY
                time.sleep(max(0.0, next_at - time.perf_counter()))
                next_at = max(next_at, time.perf_counter() - PING_EVERY)  # no catch-up burst


def _summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "n": len(ordered),
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max_ms": 1000 * ordered[-1],
    }


def _reloads(daemon: DaemonProcess) -> list[dict[str, Any]]:
    """Finished reloads, from the daemon's log: polling status would load the daemon (a
    status document of thousands of services) and spoil the measurement."""
    names = ("reload.applied", "reload.rejected", "reload.unchanged")
    return [e for e in daemon.events() if e.get("event") in names]


def bench_reload(kind: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        config_dir = Path(tmp)
        port = free_port()
        small = {"tiny": fake_vllm(port, "tiny", start="on-demand")}
        write_atomic(config_dir / "gpu0.yaml", profile_text(small))
        big = big_profile(MAX_FILE_BYTES - 200, first_port=40000 if kind == "applied" else 2000)
        if kind == "rejected":  # the last service takes the port of "tiny": cross-file error
            big += f"  clash:\n    engine: command\n    port: {port}\n    command: [x]\n"
        with run_daemon(config_dir, gateway=True) as daemon:
            pinger = Pinger(f"{daemon.gateway_url}/v1/models")
            pinger.start()
            time.sleep(1.0)
            before = len(_reloads(daemon))
            dropped = time.perf_counter()
            write_atomic(config_dir / "gpu9.yaml", big)
            done = wait_until(lambda: _reloads(daemon)[before:], 60, "reload")
            reloaded = time.perf_counter()
            time.sleep(1.0)
            pinger.stop.set()
            pinger.join()
    baseline = [lat for sent, lat in pinger.samples if sent < dropped]
    during = [lat for sent, lat in pinger.samples if sent >= dropped]
    return {
        "file": kind,
        "result": str(done[0]["event"]).removeprefix("reload."),
        "reload_s": round(reloaded - dropped, 3),
        "baseline": _summary(baseline),
        "during": _summary(during),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "check": bench_check(args.runs),
        "reload": [bench_reload("rejected"), bench_reload("applied")],
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    c = results["check"]
    cpu, cli = c["load_config_cpu_s"], c["check_cli_wall_s"]
    print(
        f"check, {c['file_bytes']} bytes, {c['services']} services: load_config "
        f"{cpu['best']:.2f} s CPU (median {cpu['median']:.2f}), CLI {cli['best']:.2f} s wall "
        f"(median {cli['median']:.2f}), peak RSS {c['check_cli_peak_rss_mib']} MiB"
    )
    for r in results["reload"]:
        b, d = r["baseline"], r["during"]
        print(
            f"reload of a 1 MiB file ({r['file']} -> {r['result']} in {r['reload_s']:.2f} s): "
            f"gateway p50/p99/max {d['p50_ms']:.1f}/{d['p99_ms']:.1f}/{d['max_ms']:.1f} ms "
            f"(baseline {b['p50_ms']:.1f}/{b['p99_ms']:.1f}/{b['max_ms']:.1f} ms, n={d['n']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
