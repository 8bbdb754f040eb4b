"""Crash diagnosis speed: every labelled engine log, classified the way the daemon does it.

For each ``tests/data/engine_logs/*.log`` the script reads the last 64 KiB (what the daemon
and ``llm-supervisor diagnose`` look at), classifies it ``--repeat`` times without naming
the engine and prints the median and worst time per file, then the slowest files and a
summary. A second pass pads every log with 64 KiB of real vLLM shutdown noise in front, the
worst case for the line scan. Budget: 100 ms per file; the exit status is 1 if any file's
median exceeds it.

    .venv/bin/python bench/diagnose_bench.py [--repeat 20] [--budget-ms 100] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from llm_supervisor.diagnosis import TAIL_BYTES, diagnose  # noqa: E402

LOGS = REPO / "tests" / "data" / "engine_logs"
# Lines vLLM prints after a root cause (from tests/data/engine_logs), repeated as padding.
NOISE = [
    "(APIServer pid=1) ERROR 05-05 12:36:59 [serving.py:1173] vllm.v1.engine.exceptions."
    "EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root cause.",
    "(EngineCore_DP0 pid=17374) Process EngineCore_DP0:",
    "(EngineCore_DP0 pid=17374) Traceback (most recent call last):",
    '  File "/usr/lib/python3.12/multiprocessing/process.py", line 314, in _bootstrap',
    "/usr/lib/python3.10/multiprocessing/resource_tracker.py:224: UserWarning: resource_tracker: "
    "There appear to be 2 leaked shared_memory objects to clean up at shutdown",
]


def _tail(text: str) -> str:
    data = text.encode()
    return data[-TAIL_BYTES:].decode("utf-8", errors="replace")


def _time_ms(text: str, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        diagnose(text)
        times.append((time.perf_counter() - started) * 1000)
    return times


def _padded(text: str) -> str:
    noise = "\n".join(NOISE[i % len(NOISE)] for i in range(TAIL_BYTES // 60))
    return _tail(noise + "\n" + text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="runs per file (default 20)")
    parser.add_argument("--budget-ms", type=float, default=100.0, help="per-file limit")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the numbers here")
    args = parser.parse_args()

    results: dict[str, dict[str, float]] = {}
    for path in sorted(LOGS.glob("*.log")):
        text = _tail(path.read_text(encoding="utf-8"))
        plain = _time_ms(text, args.repeat)
        padded = _time_ms(_padded(text), args.repeat)
        results[path.name] = {
            "bytes": len(text.encode()),
            "median_ms": statistics.median(plain),
            "max_ms": max(plain),
            "padded_median_ms": statistics.median(padded),
            "padded_max_ms": max(padded),
        }
        row = results[path.name]
        print(
            f"{path.name:58} {row['bytes']:7} B  median {row['median_ms']:6.2f} ms  "
            f"max {row['max_ms']:6.2f} ms  | 64 KiB padded: median "
            f"{row['padded_median_ms']:6.2f} ms  max {row['padded_max_ms']:6.2f} ms"
        )

    medians = [row["median_ms"] for row in results.values()]
    padded_medians = [row["padded_median_ms"] for row in results.values()]
    slowest = sorted(results.items(), key=lambda item: -item[1]["padded_median_ms"])[:5]
    print(f"\n{len(results)} files, {args.repeat} runs each, budget {args.budget_ms:g} ms per file")
    print(
        f"as recorded:   median of medians {statistics.median(medians):.2f} ms, "
        f"worst median {max(medians):.2f} ms"
    )
    print(
        f"64 KiB padded: median of medians {statistics.median(padded_medians):.2f} ms, "
        f"worst median {max(padded_medians):.2f} ms"
    )
    print(
        "slowest (padded): " + ", ".join(f"{n} {r['padded_median_ms']:.2f} ms" for n, r in slowest)
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    over = [name for name, row in results.items() if row["padded_median_ms"] > args.budget_ms]
    if over:
        print(f"over budget: {over}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
