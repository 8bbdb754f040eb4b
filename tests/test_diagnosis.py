"""Crash diagnosis: real engine log excerpts, ranking rules, exit-status fallbacks, the command.

Every ``tests/data/engine_logs/*.log`` is a real excerpt (sources in SOURCES.md there) and
needs one entry in ``expected.json``: {"cause", "engine", optional "numbers" (a subset of
what must be parsed) and "line_contains" (a substring of the deciding line)}.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llm_supervisor.cli import main
from llm_supervisor.diagnosis import CAUSES, TAIL_BYTES, diagnose, diagnose_exit

LOGS = Path(__file__).parent / "data" / "engine_logs"
EXPECTED: dict[str, dict[str, Any]] = json.loads((LOGS / "expected.json").read_text())
LOG_FILES = sorted(p.name for p in LOGS.glob("*.log"))


def test_every_log_has_an_expectation_and_a_source() -> None:
    sources = (LOGS / "SOURCES.md").read_text()
    assert sorted(EXPECTED) == LOG_FILES, "expected.json and the *.log files differ"
    missing = [name for name in LOG_FILES if f"`{name}`" not in sources]
    assert not missing, f"no source noted in SOURCES.md for {missing}"
    assert len(LOG_FILES) >= 30


@pytest.mark.parametrize("name", LOG_FILES)
def test_real_log_excerpt(name: str) -> None:
    expected = EXPECTED[name]
    text = (LOGS / name).read_text(encoding="utf-8")
    result = diagnose(text, expected.get("engine"))
    assert result.cause == expected["cause"], result
    assert expected.get("line_contains", "") in (result.line or ""), result
    for key, value in expected.get("numbers", {}).items():
        assert key in result.numbers, result
        assert math.isclose(result.numbers[key], value, abs_tol=1e-3), (key, result)
    assert result.hint and "\n" not in result.hint
    # The daemon may not know the engine (engine: command); the cause must not depend on it.
    assert diagnose(text).cause == expected["cause"]


def test_expected_causes_are_known_names() -> None:
    assert {e["cause"] for e in EXPECTED.values()} <= set(CAUSES)


def _noise(lines: int) -> str:
    """Shutdown noise as vLLM prints it after the root cause (real lines, repeated)."""
    block = [
        "(APIServer pid=1) ERROR 05-05 12:36:59 [serving.py:1173] vllm.v1.engine.exceptions."
        "EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the "
        "root cause.",
        "(EngineCore_DP0 pid=17374) Process EngineCore_DP0:",
        "(EngineCore_DP0 pid=17374) Traceback (most recent call last):",
        '  File "/usr/lib/python3.12/multiprocessing/process.py", line 314, in _bootstrap',
        "    self.run()",
        "/usr/lib/python3.10/multiprocessing/resource_tracker.py:224: UserWarning: "
        "resource_tracker: There appear to be 2 leaked shared_memory objects to clean up at "
        "shutdown",
    ]
    return "\n".join(block[i % len(block)] for i in range(lines))


def test_cause_far_above_the_end_wins_over_later_engine_dead_noise() -> None:
    cause = (LOGS / "vllm-v1-kv-cache-estimated-len.log").read_text()
    text = "INFO starting\n" + cause + _noise(150) + "\n"
    result = diagnose(text, "vllm")
    assert result.cause == "kv_cache_insufficient"
    assert result.numbers["max_tokens_fit"] == 5632
    assert "set max-model-len to 5632 or lower" in result.hint


def test_specific_cause_wins_regardless_of_order() -> None:
    oom = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 MiB."
    free = (LOGS / "vllm-free-memory-cuda1.log").read_text()
    assert diagnose(oom + "\n" + free).cause == "insufficient_free_memory"
    assert diagnose(free + "\n" + oom).cause == "insufficient_free_memory"


def test_tqdm_carriage_returns_and_colours_split_lines() -> None:
    bar = "".join(f"Loading safetensors checkpoint shards: {p}% Completed\r" for p in (0, 50))
    error = "\x1b[1;31mOSError: [Errno 98] Address already in use\x1b[0m"
    result = diagnose(bar + error + "\r\n")
    assert result.cause == "port_in_use"
    assert result.line == "OSError: [Errno 98] Address already in use"


def test_message_line_preferred_over_the_quoted_raise_line() -> None:
    text = (LOGS / "vllm-v0-no-cache-blocks-compose.log").read_text()
    assert "raise ValueError" not in (diagnose(text).line or "")


def test_older_kv_message_without_estimate_gets_one_computed() -> None:
    # vLLM before the estimate was added: the f-string of check_enough_kv_cache_memory.
    text = (
        "ValueError: To serve at least one request with the models's max seq len (32768), "
        "(4.00 GiB KV cache is needed, which is larger than the available KV cache memory "
        "(2.72 GiB). Try increasing `gpu_memory_utilization` or decreasing `max_model_len` "
        "when initializing the engine."
    )
    result = diagnose(text, "vllm")
    assert result.numbers["max_tokens_fit_estimate"] == math.floor(32768 * 2.72 / 4.0)
    assert "about 22282" in result.hint


def test_engine_restricts_the_patterns() -> None:
    text = "Error: pull model manifest: file does not exist"
    assert diagnose(text, "ollama").cause == "model_not_found"
    assert diagnose(text, "vllm").cause == "unknown"


def test_harmless_lines_are_not_failures() -> None:
    text = "\n".join(
        [
            "WARNING 03-01 [parallel.py:746] Address already in use. Retrying with a new port.",
            'level=INFO source=server.go:1069 msg="model requires more system memory than is '
            'currently available, evicting a model to make space"',
            "INFO 01-28 16:08:46 [kv_cache_utils.py:1305] GPU KV cache size: 175,856 tokens",
        ]
    )
    assert diagnose(text).cause == "unknown"


def test_unknown_output() -> None:
    result = diagnose("INFO: Started server process [1]\nINFO: Waiting for startup")
    assert result.cause == "unknown" and result.line is None and not result.known


@pytest.mark.parametrize(
    ("exit_code", "signal", "cause", "hint_part"),
    [
        (127, None, "executable_missing", "exit 127"),
        (126, None, "executable_missing", "exit 126"),
        (-9, None, "killed", "check dmesg for the OOM killer"),
        (137, None, "killed", "SIGKILL"),
        (None, 9, "killed", "SIGKILL"),
        (None, 15, "killed", "SIGTERM"),
        (-11, None, "engine_dead", "SIGSEGV"),
        (0, None, "unexpected_exit", "exited on its own"),
        (1, None, "unknown", "exited with code 1"),
        (None, None, "unknown", "no known failure message"),
    ],
)
def test_exit_status_fallbacks(
    exit_code: int | None, signal: int | None, cause: str, hint_part: str
) -> None:
    result = diagnose_exit("INFO nothing to see\n", "vllm", exit_code, signal)
    assert result.cause == cause
    assert hint_part in result.hint


def test_output_beats_exit_status() -> None:
    text = (LOGS / "ollama-port-in-use.log").read_text()
    assert diagnose_exit(text, "ollama", 1, None).cause == "port_in_use"
    assert diagnose_exit(text, "ollama", None, 9).cause == "port_in_use"


def test_to_json_shape() -> None:
    result = diagnose((LOGS / "vllm-max-model-len-pydantic.log").read_text(), "vllm")
    assert result.to_json() == {
        "cause": "max_model_len_too_large",
        "hint": result.hint,
        "line": result.line,
        "numbers": {"max_model_len": 513, "derived_max_model_len": 512},
    }


def test_a_full_tail_is_classified_quickly() -> None:
    text = _noise(2000)[:TAIL_BYTES] + "\n" + (LOGS / "vllm-free-memory-cuda1.log").read_text()
    started = time.perf_counter()
    assert diagnose(text).cause == "insufficient_free_memory"
    assert time.perf_counter() - started < 1.0


def test_command_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["diagnose", str(LOGS / "vllm-v0-kv-cache-29k.log")])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0] == "cause: kv_cache_insufficient"
    assert "max_tokens_fit=23648" in out


def test_command_json_and_engine(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["diagnose", str(LOGS / "ollama-port-in-use.log"), "--engine", "ollama", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(data) == {"cause", "hint", "line", "numbers"}
    assert data["cause"] == "port_in_use" and data["numbers"] == {"port": 11434}


def test_command_tail_bytes_reads_only_the_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "engine.log"
    log.write_text((LOGS / "ollama-port-in-use.log").read_text() + "x" * 200 + "\n")
    assert main(["diagnose", str(log), "--tail-bytes", "100"]) == 1
    assert "cause: unknown" in capsys.readouterr().out
    assert main(["diagnose", str(log), "--tail-bytes", "0"]) == 0


def test_command_unreadable_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["diagnose", str(tmp_path / "missing.log")])
    assert exc.value.code == 2


def test_command_reads_stdin_as_a_process() -> None:
    text = (LOGS / "vllm-unsupported-gpu-bf16-p40.log").read_text()
    done = subprocess.run(
        [sys.executable, "-m", "llm_supervisor.cli", "diagnose", "-", "--json"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cause"] == "unsupported_gpu"
    unknown = subprocess.run(
        [sys.executable, "-m", "llm_supervisor.cli", "diagnose"],
        input="all good\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert unknown.returncode == 1


@pytest.mark.parametrize(
    ("reason", "sig", "cause", "hint_part"),
    [
        ("startup_timeout", 15, "startup_timeout", "health.startup_timeout"),
        ("startup_timeout", 9, "startup_timeout", "stopped by the supervisor"),
        ("health", 15, "unresponsive", "liveness probes"),
        ("health", 9, "unresponsive", "stopped by the supervisor"),
    ],
)
def test_the_supervisors_own_stop_is_not_a_kill_from_outside(
    reason: str, sig: int, cause: str, hint_part: str
) -> None:
    found = diagnose_exit("INFO loading weights\n", "vllm", None, sig, stopped_for=reason)
    assert (found.cause, "outside" in found.hint) == (cause, False)
    assert hint_part in found.hint


def test_a_known_cause_in_the_output_still_wins_over_an_own_stop() -> None:
    text = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    found = diagnose_exit(text, "vllm", None, 15, stopped_for="startup_timeout")
    assert found.cause == "cuda_oom"


def test_a_crash_is_still_diagnosed_from_its_signal() -> None:
    assert "outside" in diagnose_exit("", "vllm", None, 15, stopped_for="crash").hint
