"""Shutdown time for 64 services: SIGTERM to the daemon → the daemon has exited.

Each run starts the real daemon (``llm-supervisor run``) on N fake vLLM services
(tests/fakes/fake_engine.py, which exit on SIGTERM), waits until all are ready, sends
SIGTERM and times until the daemon process is gone; then looks for any process still
carrying the daemon's marker (target: none). Baseline, same run: SIGTERM sent by
hand to N fake engines started directly, timed until all have exited (the floor: what the
engines themselves need).

    .venv/bin/python bench/shutdown_bench.py [--services 64] [--runs 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchutil import distinct_ports, event_time, spread

from llm_supervisor.process.tree import find_marked
from tests.daemon_harness import (
    FAKE_ENGINE,
    fake_vllm,
    profile_text,
    run_daemon,
    write_atomic,
)


def daemon_run(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="shutdown-bench-") as tmp:
        config_dir = Path(tmp)
        services = {
            f"svc{i:02d}": fake_vllm(
                port, f"model-{i:02d}", health={"interval": 1.0, "startup_timeout": 120}
            )
            for i, port in enumerate(distinct_ports(n))
        }  # fmt: skip
        write_atomic(config_dir / "cpu.yaml", profile_text(services))
        with run_daemon(config_dir, timeout=180) as daemon:
            processes = sum(len(s["pids"]) for s in daemon.services().values())
            start = time.monotonic()
            daemon.signal(signal.SIGTERM)
            code = daemon.proc.wait(60)
            elapsed = time.monotonic() - start
            leftovers = len(find_marked(daemon.marker_prefix, prefix=True))
            stopping = daemon.events("daemon.stopping")[-1]
            stopped = daemon.events("daemon.stopped")[-1]
    return {
        "seconds": elapsed, "exit_code": code, "processes": processes, "leftovers": leftovers,
        "logged_s": event_time(stopped) - event_time(stopping),
    }  # fmt: skip


def baseline_run(n: int) -> float:
    """SIGTERM n directly started fake engines; seconds until every one has exited."""
    procs = [
        subprocess.Popen(
            [sys.executable, FAKE_ENGINE, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(n)
    ]
    try:
        for proc in procs:  # wait until each one serves
            assert proc.stdout is not None
            while b"serving" not in (line := proc.stdout.readline()):
                if not line:
                    raise RuntimeError(f"fake engine exited early: {proc.wait()}")
        start = time.monotonic()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
        return time.monotonic() - start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    runs = [daemon_run(args.services) for _ in range(args.runs)]
    floor = [baseline_run(args.services) for _ in range(args.runs)]
    daemon = spread([r["seconds"] for r in runs])
    base = spread(floor)
    result = {
        "services": args.services,
        "runs": runs,
        "daemon_s": daemon,
        "baseline_s": base,
        "ratio": daemon["median"] / base["median"],
        "leftovers": sum(r["leftovers"] for r in runs),
        "exit_codes": sorted({r["exit_code"] for r in runs}),
    }
    print(
        f"shutdown of {args.services} services ({runs[0]['processes']} processes), {args.runs} runs"
    )
    print(
        f"  SIGTERM -> daemon exited: median {daemon['median']:.2f} s "
        f"(min {daemon['min']:.2f}, max {daemon['max']:.2f}); exit codes {result['exit_codes']}"
    )
    print(
        f"  baseline, SIGTERM to {args.services} bare engines -> all exited: median "
        f"{base['median']:.2f} s; ratio {result['ratio']:.1f}x"
    )
    print(f"  processes left carrying the daemon's marker: {result['leftovers']} (target 0)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["leftovers"] == 0 and result["exit_codes"] == [0] else 1


if __name__ == "__main__":
    sys.exit(main())
