"""BENCHMARKS.md from the bench scripts' JSON: the machine, then one section per bench."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import psutil
from benchutil import spread

MACHINE_KEYS = ("cpu", "cores", "ram", "kernel", "python", "load_before")
PACKAGES = ("httpx", "aiohttp", "httptools", "uvloop", "uvicorn", "starlette", "pydantic",
            "structlog", "psutil", "watchfiles")  # fmt: skip
Section = Callable[[dict[str, Any]], list[str]]


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo"):  # noqa: SIM115
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "packages": versions,
        "tools": {"wrk": _version(["wrk", "--version"]), "nginx": _version(["nginx", "-v"])},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _version(argv: list[str]) -> str:
    exe = shutil.which(argv[0]) or shutil.which(f"/usr/sbin/{argv[0]}")
    if exe is None:
        return "not installed"
    proc = subprocess.run([exe, *argv[1:]], capture_output=True, text=True)
    text = (proc.stdout + proc.stderr).strip().splitlines()
    return text[0].split(" Copyright")[0] if text else "?"


def _ms(values: list[float]) -> str:
    s = spread(values)
    return f"{s['median']:.1f} ms (min {s['min']:.1f}, max {s['max']:.1f}, sd {s['stdev']:.1f})"


def core(d: dict[str, Any]) -> list[str]:
    base = d["poll_baseline_ms"]
    respawn, ready = statistics.median(d["respawn_ms"]), statistics.median(d["ready_ms"])
    return [
        f"kill -9 of a ready fake vLLM engine, {len(d['respawn_ms'])} times "
        "(bench/core_bench.py). Baseline: a 1 s poll (supervisord, llama-swap) — on average "
        f"{base / 2:.0f} ms, at worst {base:.0f} ms.",
        "",
        "| measure | median (spread) | vs 1 s poll (mean 500 ms) |",
        "|---|---|---|",
        f"| child death → restart spawned | {_ms(d['respawn_ms'])} | {base / 2 / respawn:.0f}x |",
        f"| engine serving → state ready | {_ms(d['ready_ms'])} | {base / 2 / ready:.0f}x |",
    ]


def reload(d: dict[str, Any]) -> list[str]:
    rows = [
        ("save → applied", d["save_to_applied_s"]),
        ("save → new process", d["save_to_spawned_s"]),
        ("save → ready again", d["save_to_ready_s"]),
    ]
    lines = [
        f"{d['edits']} one-service edits of {d['services']} fake vLLM services in 4 files, saved "
        "like an editor does (bench/reload_bench.py). Baseline: llama-swap polls its config "
        "every 2 s (1 s on average) and restarts every model.",
        "",
        "| measure | median (min to max) | vs a 2 s poll (mean 1 s) |",
        "|---|---|---|",
    ]
    for label, s in rows:
        lines.append(
            f"| {label} | {s['median'] * 1e3:.0f} ms ({s['min'] * 1e3:.0f} to "
            f"{s['max'] * 1e3:.0f}) | {1.0 / s['median']:.1f}x |"
        )
    pol = d["policy_edit"]
    lines += [
        "",
        f"Services restarted per one-service edit: {d['restarted_per_edit']} of "
        f"{d['services']} (llama-swap: all). Policy-only edit: applied in "
        f"{pol['save_to_applied_s'] * 1e3:.0f} ms, {pol['restarted']} services restarted.",
    ]
    return lines


def gateway(d: dict[str, Any]) -> list[str]:
    lines = [
        f"wrk, {d['seconds']} s per cell, against a minimal keep-alive upstream "
        "(bench/gateway_bench.py); nginx with one worker and the gateway each run in their own "
        "process. CPU is the serving process's user + system time per request (or per relayed "
        "event), from /proc: it barely moves with the machine's other work, req/s does. Cells "
        f"with many clients ran {d.get('repeat', 1)} times, the paths taking turns; the run with "
        "the median CPU is shown. Load average before / after: "
        f"{d.get('loadavg_before', '?')} / {d.get('loadavg_after', '?')}.",
        "",
        "| request | path | clients | req/s | p50 ms | p99 ms | CPU µs/request | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, key in (("`GET /api/version`", "wrk"), ("`POST /v1/chat/completions`", "post")):
        for cell, r in d.get(key, {}).items():
            name, conns = cell.split("@")
            lines.append(
                f"| {label} | {name} | {conns} | {r['rps']:.0f} | {r['p50']:.3f} | "
                f"{r['p99']:.3f} | {r['cpu_us']:.1f} | {r['load1']:.2f} |"
            )
    sse = d.get("sse", {})
    if sse:
        lines += [
            "",
            "Streamed chat completions (SSE, one event per chunk, 50 events 10 ms apart per "
            "answer, as an engine sends tokens), 200 concurrent streams:",
            "",
            "| path | events/s | CPU µs/event (runs) | load |",
            "|---|---|---|---|",
        ]
        for cell, r in sse.items():
            runs = ", ".join(f"{x:.1f}" for x in r.get("cpu_us_runs", [r["cpu_us"]]))
            lines.append(
                f"| {cell.split('@')[0]} | {r['events_per_s']:.0f} | {r['cpu_us']:.1f} ({runs}) "
                f"| {r['load1']:.2f} |"
            )
    lines += ["", *_gateway_ratios(d)]
    return lines


def _gateway_ratios(d: dict[str, Any]) -> list[str]:
    said = []
    if "post" in d:
        p = d["post"]
        ratio = p["gateway@64"]["cpu_us"] / p["nginx@64"]["cpu_us"]
        said.append(
            f"CPU per proxied `POST` at 64 clients, gateway / nginx: {ratio:.2f}x (target <= 4); "
            f"req/s {p['gateway@64']['rps'] / p['nginx@64']['rps']:.2f} of nginx's."
        )
    if "sse" in d:
        s = d["sse"]
        ratio = s["gateway@200"]["cpu_us"] / s["nginx@200"]["cpu_us"]
        said.append(f"CPU per relayed SSE event, gateway / nginx: {ratio:.2f}x (target <= 1.5).")
    if "wrk" in d:
        w = d["wrk"]
        added = w["gateway@1"]["p50"] - w["direct@1"]["p50"]
        nginx_added = w["nginx@1"]["p50"] - w["direct@1"]["p50"]
        said.append(
            f"Added p50 latency at 1 client (GET): gateway {added:.3f} ms, nginx "
            f"{nginx_added:.3f} ms."
        )
    if "first_chunk_ms" in d:
        t = d["first_chunk_ms"]
        said.append(
            f"First streamed chunk (median): direct {t['direct']:.3f} ms, gateway "
            f"{t['gateway']:.3f} ms, nginx {t['nginx']:.3f} ms."
        )
    return [" ".join(said)]


def core_load(d: dict[str, Any]) -> list[str]:
    late = [(i - 0.25) * 1e3 for i in d.get("probe_intervals_s", [])]
    lines = [
        f"As above, {len(d['respawn_ms'])} kills, while wrk keeps the daemon's own gateway "
        f"saturated ({d['gateway_clients']} connections of `POST /v1/chat/completions` to a fast "
        "`command` engine) and a third service is probed every 0.25 s "
        f"(bench/core_bench.py --gateway-load). Load average at the start: {d.get('loadavg')}.",
        "",
        "| measure | median (spread) | target |",
        "|---|---|---|",
        f"| child death → restart spawned | {_ms(d['respawn_ms'])} | median < 50 ms |",
        f"| engine serving → state ready | {_ms(d['ready_ms'])} | |",
    ]
    if late:
        lines.append(f"| probe lateness (interval minus 0.25 s) | {_ms(late)} | on schedule |")
    return lines


def classroom(d: dict[str, Any]) -> list[str]:
    lines = [
        f"{d['participants']} participants, four code paths each sending their own keep_alive "
        '(`"10m"`, `0`, `"10m"`, `"0s"`), the pauses of shared/seeds/003, against the '
        f"fake Ollama run by the daemon (bench/classroom_bench.py). Time scaled 1:{d['scale']:g}:"
        f" the 6.5 min cold load of gpt-oss:120b is {d['load_s']:.2f} s. Baseline: the clients "
        "talk to Ollama directly.",
        "",
        "| path | loads during class | requests that waited for a load | that in the real "
        "classroom | all requests, measured | longest |",
        "|---|---|---|---|---|---|",
    ]
    for row in (d["direct"], d["gateway"]):
        lines.append(
            f"| {row['variant']} | {row['loads_during_class']} | {row['cold_waits']} of "
            f"{row['requests']} | {row['load_wait_real_min']:.0f} min | {row['waited_s']:.2f} s "
            f"| {row['max_wait_s']:.2f} s |"
        )
    lines += [
        "",
        "Through the gateway the pin loads the model once before class and the policy keeps it"
        f" (keep_alive forever, client unloads denied); total request time is "
        f"{d['waiting_ratio']:.0f}x lower than direct.",
    ]
    return lines


def footprint(d: dict[str, Any]) -> list[str]:
    lines = [
        "The daemon process alone (psutil) while idle, gateway on, every fake vLLM service "
        "probed every 1 s; windows of 10 s after a settle period (bench/footprint_bench.py). "
        "Baseline: the same daemon with no services.",
        "",
        "| services | CPU, % of one core (windows) | RSS MB |",
        "|---|---|---|",
    ]
    for row in d["rows"]:
        cpu = ", ".join(f"{c:.2f}" for c in row["cpu_pct"])
        lines.append(
            f"| {row['services']} | {statistics.median(row['cpu_pct']):.2f} ({cpu}) | "
            f"{statistics.median(row['rss_mb']):.1f} |"
        )
    per, big, tgt = d["per_service"], d["largest"], d["targets"]
    lines += [
        "",
        f"Growth per service (least squares): {per['rss_mb'] * 1024:.0f} KB RSS, "
        f"{per['cpu_pct']:.3f} % CPU. At {big['services']} services: RSS {big['rss_mb']:.1f} MB "
        f"(target < {tgt['rss_mb']:.0f}: {'met' if big['rss_ok'] else 'missed'}), CPU "
        f"{big['cpu_pct']:.2f} % (target < {tgt['cpu_pct']:.0f}: "
        f"{'met' if big['cpu_ok'] else 'missed'}).",
    ]
    return lines


def shutdown(d: dict[str, Any]) -> list[str]:
    s, b = d["daemon_s"], d["baseline_s"]
    logged = [r["logged_s"] for r in d["runs"]]
    return [
        f"SIGTERM to the daemon with {d['services']} ready fake vLLM services → daemon exited, "
        f"{len(d['runs'])} runs (bench/shutdown_bench.py). Baseline: SIGTERM sent by hand to "
        f"{d['services']} bare fake engines → all exited.",
        "",
        "| measure | median (min to max) |",
        "|---|---|",
        f"| daemon: SIGTERM → process gone | {s['median']:.2f} s ({s['min']:.2f} to {s['max']:.2f})"
        " |",
        f"| daemon's own log: stopping → stopped | {statistics.median(logged):.2f} s |",
        f"| baseline: bare engines | {b['median']:.2f} s ({b['min']:.2f} to {b['max']:.2f}) |",
        "",
        f"Ratio daemon / baseline: {d['ratio']:.1f}x. Processes left carrying the daemon's "
        f"marker afterwards: {d['leftovers']}. Exit codes: {d['exit_codes']}.",
    ]


SECTIONS: dict[str, tuple[str, Section]] = {
    "core": ("Supervision latency", core),
    "reload": ("Hot reload", reload),
    "core-load": ("Supervision latency under gateway load", core_load),
    "gateway": ("Gateway overhead", gateway),
    "classroom": ("Classroom replay", classroom),
    "footprint": ("Daemon footprint", footprint),
    "shutdown": ("Shutdown", shutdown),
}


def render(facts: dict[str, Any], results: dict[str, dict[str, Any]], total: float) -> str:
    pkgs = ", ".join(f"{k} {v}" for k, v in facts["packages"].items())
    out = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (bench/run_all.py) on {facts['date']}; the whole run took "
        f"{total / 60:.1f} min. Every baseline was measured in the same run, on the same "
        "machine, unless it is a documented polling interval of another tool.",
        "",
        "## Machine",
        "",
        f"- CPU: {facts['cpu']}, {facts['cores']} cores; RAM {facts['ram']}",
        f"- Kernel {facts['kernel']}, Python {facts['python']} ({sys.implementation.name})",
        f"- Load average before / after: {facts['load_before']} / {facts.get('load_after', '?')}"
        " (a shared machine: other work ran alongside, so CPU numbers are upper bounds)",
        f"- Packages: {pkgs}",
        f"- Tools: {facts['tools']['wrk']}; {facts['tools']['nginx']}",
    ]
    for name, result in results.items():
        title, section = SECTIONS[name]
        out += ["", f"## {title}", ""]
        if result["data"] is None:
            tail = "\n".join(result["text"].splitlines()[-15:])
            out += [f"Failed (exit {result['exit_code']}):", "", "```", tail, "```"]
            continue
        out += section(result["data"])
        out += ["", f"_({result['seconds']:.0f} s, exit {result['exit_code']})_"]
    return "\n".join(out) + "\n"
