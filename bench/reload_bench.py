"""Hot reload: time from saving a profile to the change being applied, and blast radius.

Starts the real daemon (``llm-supervisor run``) on a temporary config dir with N fake vLLM
services spread over four profile files, then saves one service's edit at a time the way
editors do (temp file + rename) and measures, per edit:

- applied: save → the reload finished (old process stopped, new one launched), from the
  daemon's own ``reload.at`` timestamp;
- spawned: save → the new engine process exists (``service.spawned`` in the JSON log);
- ready: save → the restarted service answers again (status polled every 5 ms);
- restarted: how many of the N services got a new pid (target 1).

Plus a policy-only edit (keep_alive rule): applied time and restarted count (target 0).
For comparison, llama-swap polls its config every 2 s and restarts every model on reload.

    .venv/bin/python bench/reload_bench.py [--services 32] [--edits 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemon_harness import (
    DaemonProcess,
    fake_vllm,
    free_port,
    profile_text,
    run_daemon,
    wait_until,
    write_atomic,
)

FILES = 4


def build(config_dir: Path, n: int) -> dict[str, dict[str, Any]]:
    services = {
        f"svc{i:02d}": fake_vllm(free_port(), f"model-{i:02d}", args={"max-model-len": 1024})
        for i in range(n)
    }
    for f in range(FILES):
        write_file(config_dir, services, f)
    write_atomic(config_dir / "policy.yaml", policy(10))
    return services


def file_of(name: str) -> int:
    return int(name[3:]) % FILES


def write_file(config_dir: Path, services: dict[str, Any], f: int) -> None:
    mine = {name: spec for name, spec in services.items() if file_of(name) == f}
    write_atomic(config_dir / f"gpu{f}.yaml", profile_text(mine))


def policy(minutes: int) -> str:
    return f"keep_alive:\n  rules:\n    - {{match: 'model-*', keep_alive: {minutes}m}}\n"


def event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def one_edit(
    daemon: DaemonProcess, services: dict[str, Any], name: str, value: int
) -> dict[str, float]:
    before = daemon.pids()
    reloads = sum(daemon.reload_counts().values())
    spawned_before = len(daemon.events("service.spawned"))
    services[name]["args"] = {"max-model-len": value}
    saved = time.time()
    write_file(daemon.config_dir, services, file_of(name))

    def ready() -> dict[str, Any] | None:
        status = daemon.status()
        svc = status["services"][name]
        if svc["state"] == "ready" and svc["pid"] not in (None, before[name]):
            return status
        return None

    status = wait_until(ready, 30, f"{name} ready again")
    ready_at = time.time()
    status = daemon.wait_status(lambda s: sum(s["reload"]["counts"].values()) > reloads)
    spawned = [e for e in daemon.events("service.spawned")[spawned_before:] if e["service"] == name]
    after = {n: s["pid"] for n, s in status["services"].items()}
    return {
        "applied": status["reload"]["at"] - saved,
        "spawned": event_time(spawned[0]) - saved,
        "ready": ready_at - saved,
        "restarted": float(sum(1 for n in before if after.get(n) != before[n])),
    }


def policy_edit(daemon: DaemonProcess) -> dict[str, float]:
    before = daemon.pids()
    reloads = sum(daemon.reload_counts().values())
    saved = time.time()
    write_atomic(daemon.config_dir / "policy.yaml", policy(20))
    status = daemon.wait_status(lambda s: sum(s["reload"]["counts"].values()) > reloads)
    after = {n: s["pid"] for n, s in status["services"].items()}
    return {
        "applied": status["reload"]["at"] - saved,
        "restarted": float(sum(1 for n in before if after.get(n) != before[n])),
    }


def summary(rows: list[dict[str, float]], key: str) -> dict[str, float]:
    values = sorted(r[key] for r in rows)
    return {
        "median": statistics.median(values),
        "min": values[0],
        "max": values[-1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=32)
    parser.add_argument("--edits", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reload-bench-") as tmp:
        config_dir = Path(tmp)
        services = build(config_dir, args.services)
        with run_daemon(config_dir, timeout=120) as daemon:
            names = sorted(services)
            rows = [
                one_edit(daemon, services, names[(i * 7) % len(names)], 2048 + i)
                for i in range(args.edits)
            ]
            pol = policy_edit(daemon)
            counts = daemon.reload_counts()
    result = {
        "services": args.services,
        "edits": args.edits,
        "save_to_applied_s": summary(rows, "applied"),
        "save_to_spawned_s": summary(rows, "spawned"),
        "save_to_ready_s": summary(rows, "ready"),
        "restarted_per_edit": sorted({int(r["restarted"]) for r in rows}),
        "policy_edit": {"save_to_applied_s": pol["applied"], "restarted": int(pol["restarted"])},
        "reload_counts": counts,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    ok = result["save_to_applied_s"]["median"] < 0.5 and result["restarted_per_edit"] == [1]
    return 0 if ok else 1


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def report(r: dict[str, Any]) -> None:
    print(f"hot reload, {r['services']} services in {FILES} files, {r['edits']} one-service edits")
    for key, label in (("save_to_applied_s", "save → applied"),
                       ("save_to_spawned_s", "save → new process"),
                       ("save_to_ready_s", "save → ready again")):  # fmt: skip
        s = r[key]
        print(f"  {label:<20} median {ms(s['median'])}  (min {ms(s['min'])}, max {ms(s['max'])})")
    print(f"  services restarted per one-service edit: {r['restarted_per_edit']} (target [1])")
    pol = r["policy_edit"]
    print(
        f"  policy-only edit: applied in {ms(pol['save_to_applied_s'])}, "
        f"{pol['restarted']} services restarted (target 0)"
    )
    print(f"  reloads: {r['reload_counts']}")
    print("  (llama-swap: polls config every 2 s, restarts every model on reload)")


if __name__ == "__main__":
    sys.exit(main())
