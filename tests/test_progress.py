"""Load phases parsed from real engine wording; the tracker keeps a phase's start time."""

from __future__ import annotations

import pytest

from llm_supervisor.service.progress import ProgressTracker, parse_line

VLLM = [
    ("Loading safetensors checkpoint shards:  50% Completed | 1/2 [00:01<00:01,  1.1s/it]",
     "loading weights", 0.5),
    ("INFO 06-01 gpu_model_runner.py:1] Starting to load model /models/tiny...",
     "loading weights", None),
    ("INFO Model loading took 14.9934 GiB and 3.123 seconds", "loaded weights", None),
    ("INFO Memory profiling takes 5.12 seconds", "profiling memory", None),
    ("INFO kv_cache_utils.py:1] GPU KV cache size: 22,256 tokens", "allocating KV cache", None),
    ("INFO backends.py:1] Dynamo bytecode transform time: 4.10 s", "compiling", None),
    ("Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 45%|████▌ | 30/67 [00:02<00:02]",
     "capturing CUDA graphs", 30 / 67),
    ("INFO api_server.py:1] Starting vLLM API server 0 on http://127.0.0.1:8001",
     "starting API server", None),
]  # fmt: skip


@pytest.mark.parametrize(("line", "phase", "fraction"), VLLM)
def test_vllm_phases(line: str, phase: str, fraction: float | None) -> None:
    found = parse_line(line, "vllm")
    assert found is not None
    assert found[0] == phase
    assert found[1] == (pytest.approx(fraction) if fraction is not None else None)


def test_ollama_progress_and_engine_filter() -> None:
    line = 'time=2025-01-01 level=INFO source=server.go:601 msg="model load progress 0.52"'
    assert parse_line(line, "ollama") == ("loading model", 0.52, line)
    assert parse_line(line, "vllm") is None
    assert parse_line("INFO: 127.0.0.1 GET /health 200", "vllm") is None


def test_tracker_keeps_phase_start_until_phase_changes() -> None:
    now = [10.0]
    tracker = ProgressTracker("vllm", lambda: now[0])
    tracker.feed("Loading safetensors checkpoint shards: 25% Completed | 1/4")
    now[0] = 12.0
    tracker.feed("Loading safetensors checkpoint shards: 50% Completed | 2/4")
    assert tracker.current is not None
    assert (tracker.current.since, tracker.current.fraction) == (10.0, 0.5)
    now[0] = 15.0
    tracker.feed("Memory profiling takes 1.2 seconds")
    assert (tracker.current.phase, tracker.current.since) == ("profiling memory", 15.0)
    assert tracker.current.to_json(16.0)["phase_elapsed"] == 1.0
