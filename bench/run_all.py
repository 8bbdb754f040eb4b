"""Run every bench script once and write BENCHMARKS.md (``make bench``).

Each script runs as a subprocess with modest repetition counts (the whole run takes a few
minutes) and hands back its numbers as JSON; this script adds the machine and the package
versions and renders medians, spreads and ratios against the baselines measured in the
same run. A script that fails is reported as failed, with the tail of its output.

    .venv/bin/python bench/run_all.py [--out BENCHMARKS.md] [--only core,gateway,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from render import MACHINE_KEYS, machine, render

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def _json_arg(path: Path) -> list[str]:
    return ["--json", str(path)]


# name → (argv after the script, how the JSON comes back)
Scripts = dict[str, tuple[str, list[str], Callable[[Path], list[str]] | None]]
SCRIPTS: Scripts = {
    "core": ("core_bench.py", ["--runs", "15"], _json_arg),
    "reload": ("reload_bench.py", ["--services", "32", "--edits", "8", "--json"], None),
    "core-load": ("core_bench.py", ["--runs", "15", "--gateway-load", "64"], _json_arg),
    "gateway": ("gateway_bench.py", ["--seconds", "4"], _json_arg),
    "classroom": ("classroom_bench.py", [], _json_arg),
    "footprint": ("footprint_bench.py", ["--window", "10", "--windows", "2"], _json_arg),
    "shutdown": ("shutdown_bench.py", ["--runs", "3"], _json_arg),
}


def run_one(name: str, workdir: Path) -> dict[str, Any]:
    script, args, json_arg = SCRIPTS[name]
    out = workdir / f"{name}.json"
    argv = [sys.executable, str(BENCH / script), *args, *(json_arg(out) if json_arg else [])]
    print(f"== {name}: {' '.join(argv[1:])}", flush=True)
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - started
    text = proc.stdout + proc.stderr
    print(proc.stdout if json_arg else "", proc.stderr[-2000:], sep="", flush=True)
    result: dict[str, Any] = {"seconds": elapsed, "exit_code": proc.returncode, "text": text}
    try:
        result["data"] = json.loads(out.read_text() if json_arg else proc.stdout)
    except (OSError, ValueError):
        result["data"] = None
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--only", default=",".join(SCRIPTS), help="comma-separated subset")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(SCRIPTS)
    if unknown:
        parser.error(f"unknown bench: {', '.join(sorted(unknown))}")
    facts = machine()
    print("machine: " + ", ".join(f"{k} {facts[k]}" for k in MACHINE_KEYS), flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-all-") as tmp:
        results = {name: run_one(name, Path(tmp)) for name in names}
    total = time.monotonic() - started
    facts["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    args.out.write_text(render(facts, results, total))
    print(f"wrote {args.out} ({total / 60:.1f} min)")
    return 0 if all(r["data"] is not None for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
