"""Daemon footprint while idle: RSS and CPU with 0, 8, 32 and 64 supervised fake services.

For each size, starts the real daemon (``llm-supervisor run``, gateway on) on fake vLLM
services (tests/fakes/fake_engine.py) with 1 s liveness probes, waits until every service
is ready plus a settle period, then samples the daemon process alone (psutil; the engines
are not counted) over a few windows: CPU time used per wall second (% of one core) and RSS.
The 0-service daemon is the baseline; per-service increments are least-squares slopes.

Targets at 64 services: RSS under 100 MB and CPU under 2 % of one core.

    .venv/bin/python bench/footprint_bench.py [--sizes 0,8,32,64] [--window 10] [--windows 2]
        [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchutil import distinct_ports

from tests.daemon_harness import fake_vllm, profile_text, run_daemon, write_atomic

RSS_TARGET_MB = 100.0
CPU_TARGET_PCT = 2.0


def write_config(config_dir: Path, n: int) -> None:
    services = {
        f"svc{i:02d}": fake_vllm(
            port, f"model-{i:02d}", health={"interval": 1.0, "startup_timeout": 120}
        )
        for i, port in enumerate(distinct_ports(n))
    }
    write_atomic(config_dir / "cpu.yaml", profile_text(services))


def sample(proc: psutil.Process, seconds: float) -> tuple[float, float]:
    """CPU % of one core over ``seconds`` and the median RSS (MB) sampled every 0.5 s."""
    rss: list[float] = []
    cpu0, t0 = proc.cpu_times(), time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        rss.append(proc.memory_info().rss / 2**20)
        time.sleep(min(0.5, max(0.0, end - time.monotonic())))
    cpu1, t1 = proc.cpu_times(), time.monotonic()
    used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return 100.0 * used / (t1 - t0), statistics.median(rss)


def measure(n: int, window: float, windows: int, settle: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        config_dir = Path(tmp)
        write_config(config_dir, n)
        started = time.monotonic()
        with run_daemon(config_dir, gateway=True, timeout=180) as daemon:
            boot = time.monotonic() - started
            time.sleep(settle)  # past the start burst: imports, first probes, GC
            proc = psutil.Process(daemon.proc.pid)
            cpu, rss = zip(*(sample(proc, window) for _ in range(windows)), strict=True)
            states = {s["state"] for s in daemon.services().values()}
    return {
        "services": n,
        "boot_s": boot,
        "cpu_pct": list(cpu),
        "rss_mb": list(rss),
        "all_ready": states <= {"ready"},
    }


def slope(xs: list[float], ys: list[float]) -> float:
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    num = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    den = sum((x - mean_x) ** 2 for x in xs)
    return num / den if den else 0.0


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    sizes = [float(r["services"]) for r in rows]
    cpu = [statistics.median(r["cpu_pct"]) for r in rows]
    rss = [statistics.median(r["rss_mb"]) for r in rows]
    largest = rows[-1]
    return {
        "rows": rows,
        "per_service": {"rss_mb": slope(sizes, rss), "cpu_pct": slope(sizes, cpu)},
        "largest": {
            "services": largest["services"],
            "rss_mb": rss[-1],
            "cpu_pct": cpu[-1],
            "rss_ok": rss[-1] < RSS_TARGET_MB,
            "cpu_ok": cpu[-1] < CPU_TARGET_PCT,
        },
        "targets": {"rss_mb": RSS_TARGET_MB, "cpu_pct": CPU_TARGET_PCT},
    }


def report(result: dict[str, Any]) -> None:
    print("daemon footprint while idle (1 s liveness probes; daemon process only)")
    for row in result["rows"]:
        cpu, rss = row["cpu_pct"], row["rss_mb"]
        print(
            f"  {row['services']:3d} services: CPU {statistics.median(cpu):5.2f} % of a core "
            f"(windows {', '.join(f'{c:.2f}' for c in cpu)}), RSS {statistics.median(rss):6.1f} MB"
            f", boot {row['boot_s']:.1f} s"
        )
    per = result["per_service"]
    print(f"  per service: +{per['rss_mb'] * 1024:.0f} KB RSS, +{per['cpu_pct']:.3f} % CPU")
    big = result["largest"]
    print(
        f"  at {big['services']}: RSS {big['rss_mb']:.1f} MB (target < {RSS_TARGET_MB:.0f}: "
        f"{'ok' if big['rss_ok'] else 'MISSED'}), CPU {big['cpu_pct']:.2f} % (target < "
        f"{CPU_TARGET_PCT:.0f}: {'ok' if big['cpu_ok'] else 'MISSED'})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,8,32,64")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per window")
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = [measure(n, args.window, args.windows, args.settle) for n in sizes]
    result = summarize(rows)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if all(r["all_ready"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
