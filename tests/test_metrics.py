"""The /metrics scrape, parsed with prometheus-client's own text parser."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from llm_supervisor.control.metrics import build_registry, exit_code_value, rewrite_entries

from .fakes.fake_control_backend import FakeControlBackend

FAMILIES = {
    "llm_supervisor_build_info": "gauge",
    "llm_supervisor_daemon_start_time_seconds": "gauge",
    "llm_supervisor_service_up": "gauge",
    "llm_supervisor_service_state": "gauge",
    "llm_supervisor_service_restarts": "counter",
    "llm_supervisor_service_last_exit_code": "gauge",
    "llm_supervisor_service_last_exit_timestamp_seconds": "gauge",
    "llm_supervisor_health_check_seconds": "gauge",
    "llm_supervisor_health_check_failures": "gauge",
    "llm_supervisor_requests_waiting": "gauge",
    "llm_supervisor_requests_in_flight": "gauge",
    "llm_supervisor_gpu_telemetry_available": "gauge",
    "llm_supervisor_gpu_info": "gauge",
    "llm_supervisor_gpu_memory_total_bytes": "gauge",
    "llm_supervisor_gpu_memory_used_bytes": "gauge",
    "llm_supervisor_gpu_service_memory_bytes": "gauge",
    "llm_supervisor_config_reloads": "counter",
    "llm_supervisor_config_last_reload_success_timestamp_seconds": "gauge",
    "llm_supervisor_keepalive_rewrites": "counter",
    "llm_supervisor_ollama_models_loaded": "gauge",
    "llm_supervisor_service_rolled_back": "gauge",
    "llm_supervisor_gpu_up": "gauge",
    "llm_supervisor_gpu_pressure": "gauge",
    "llm_supervisor_config_last_reload_successful": "gauge",
    "llm_supervisor_orphans_killed": "counter",
    "llm_supervisor_engines_adopted": "counter",
    "llm_supervisor_service_start_elapsed_seconds": "gauge",
    "llm_supervisor_service_supervision_errors": "counter",
    "llm_supervisor_daemon_task_errors": "counter",
}


class StatusOnly:
    """A backend that only answers status() (all the collector uses)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def status(self) -> dict[str, Any]:
        return self.doc


def scrape(backend: Any) -> dict[str, list[Sample]]:
    text = generate_latest(build_registry(backend)).decode()
    families = list(text_string_to_metric_families(text))
    assert {f.name: f.type for f in families} == FAMILIES
    return {f.name: f.samples for f in families}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


def test_every_family_present_with_values() -> None:
    fams = scrape(FakeControlBackend())
    p = "llm_supervisor_"
    assert value(fams[p + "build_info"], p + "build_info", version="0.1.0") == 1
    assert value(fams[p + "service_up"], p + "service_up", service="qwen3-8b", engine="vllm") == 1
    assert value(fams[p + "service_up"], p + "service_up", service="broken", engine="vllm") == 0
    state = fams[p + "service_state"]
    assert value(state, p + "service_state", service="broken", state="fatal") == 1
    assert sum(s.value for s in state if s.labels["service"] == "broken") == 1
    restarts = fams[p + "service_restarts"]
    name = p + "service_restarts_total"
    assert value(restarts, name, service="qwen3-8b", reason="health") == 1
    assert value(restarts, name, service="broken", reason="crash") == 5
    code = fams[p + "service_last_exit_code"]
    assert [(s.labels, s.value) for s in code] == [({"service": "broken"}, 1.0)]
    latency = fams[p + "health_check_seconds"]
    assert value(latency, p + "health_check_seconds", service="ollama") == pytest.approx(0.012)
    gpu_total = fams[p + "gpu_memory_total_bytes"]
    assert value(gpu_total, p + "gpu_memory_total_bytes", gpu="0") == 80 * 1024**3
    held = fams[p + "gpu_service_memory_bytes"]
    assert value(held, p + "gpu_service_memory_bytes", gpu="0", service="qwen3-8b") == 40 * 1024**3
    reloads = fams[p + "config_reloads"]
    assert value(reloads, p + "config_reloads_total", result="rejected") == 1
    last_ok = fams[p + "config_last_reload_success_timestamp_seconds"]
    assert last_ok[0].value == 1_700_000_010.0
    rewrites = fams[p + "keepalive_rewrites"]
    assert (
        value(rewrites, p + "keepalive_rewrites_total", model="gpt-oss:120b", rule="gpt-oss:*") == 7
    )
    loaded = fams[p + "ollama_models_loaded"]
    assert value(loaded, p + "ollama_models_loaded", service="ollama") == 2


def test_survived_errors_are_counted() -> None:
    """Crash-only loops: each exception they survived is a counter sample."""
    backend = FakeControlBackend()
    doc = backend.status()
    doc["services"]["qwen3-8b"]["supervision_errors"] = 2
    doc["daemon"]["task_errors"] = {"gpu": 3, "gateway.pins": 1}
    fams = scrape(StatusOnly(doc))
    p = "llm_supervisor_"
    errors = fams[p + "service_supervision_errors"]
    assert value(errors, p + "service_supervision_errors_total", service="qwen3-8b") == 2
    assert value(errors, p + "service_supervision_errors_total", service="broken") == 0
    tasks = fams[p + "daemon_task_errors"]
    assert value(tasks, p + "daemon_task_errors_total", task="gpu") == 3
    assert value(tasks, p + "daemon_task_errors_total", task="gateway.pins") == 1


def test_no_pid_labels() -> None:
    labelled = [s for samples in scrape(FakeControlBackend()).values() for s in samples if s.labels]
    # Not vacuous: every service and the GPU are there, each with its labels.
    assert {s.labels.get("service") for s in labelled} >= {"qwen3-8b", "broken", "ollama"}
    assert any(s.labels.get("gpu") == "0" for s in labelled)
    for sample in labelled:
        assert not {"pid", "pids", "request_id"} & sample.labels.keys()


def test_minimal_status_still_scrapes() -> None:
    """A backend without the metrics-only fields: totals and fallbacks, nothing missing."""
    doc: dict[str, Any] = {
        "version": "0.1.0",
        "daemon": {"pid": 1, "uptime": 1.0, "config_dir": "/x", "started_at": 1.0},
        "services": {
            "a": {
                "engine": "vllm",
                "state": "backoff",
                "restarts": 4,
                "last_exit": {"code": None, "signal": 9, "cause": "unknown", "at": 2.0},
            },
        },
        "gpus": {"available": False, "reason": "GPU telemetry unavailable: NVML", "gpus": []},
        "models": [],
        "policy": {"mode": "enforce", "focus": [], "default": "30m"},
        "reload": {"result": "applied", "at": 5.0, "errors": [], "changes": {}},
    }
    fams = scrape(StatusOnly(doc))
    p = "llm_supervisor_"
    restarts = fams[p + "service_restarts"]
    assert value(restarts, p + "service_restarts_total", service="a", reason="unspecified") == 4
    assert (
        value(fams[p + "service_last_exit_code"], p + "service_last_exit_code", service="a") == 137
    )
    assert fams[p + "gpu_telemetry_available"][0].value == 0
    assert fams[p + "gpu_memory_used_bytes"] == []
    assert value(fams[p + "config_reloads"], p + "config_reloads_total", result="applied") == 1
    assert fams[p + "config_last_reload_success_timestamp_seconds"][0].value == 5.0
    assert fams[p + "keepalive_rewrites"] == []


def test_helpers() -> None:
    assert exit_code_value({"code": 3, "signal": None}) == 3
    assert exit_code_value({"code": None, "signal": 15}) == 143
    assert exit_code_value({}) is None
    as_dict = {"m": {"r": 2}}
    assert list(rewrite_entries(as_dict)) == [("m", "r", 2.0)]
    assert list(rewrite_entries([{"model": "m", "rule": None, "count": 1}])) == [
        ("m", "default", 1.0)
    ]
    assert list(rewrite_entries(None)) == []


def test_scrape_reads_status_each_time() -> None:
    backend = FakeControlBackend()
    registry = build_registry(backend)
    before = generate_latest(registry).decode()
    backend.set_state("qwen3-8b", "backoff")
    after = generate_latest(registry).decode()
    line = 'llm_supervisor_service_state{service="qwen3-8b",state="backoff"}'
    assert f"{line} 0.0" in before and f"{line} 1.0" in after


def test_extra_collectors_win_on_name_clashes() -> None:
    """The gateway's keepalive_rewrites (with a ``kind`` label) replaces the status one."""
    from llm_supervisor.gateway.stats import GatewayStats

    stats = GatewayStats()
    stats.rewrites[("gpt-oss:120b", "gpt-oss:*", "keep_alive")] += 2
    text = generate_latest(build_registry(FakeControlBackend(), [stats.collector()])).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert text.count("# TYPE llm_supervisor_keepalive_rewrites_total counter") == 1
    (sample,) = families["llm_supervisor_keepalive_rewrites"].samples
    assert sample.labels == {"model": "gpt-oss:120b", "rule": "gpt-oss:*", "kind": "keep_alive"}
    assert sample.value == 2
    assert "llm_supervisor_service_up" in families  # the status families are all still there


def test_alerting_families_follow_the_status() -> None:
    """What deploy/prometheus/alerts.yml needs: rollback, lost GPU, pressure, bad reload,
    orphans killed at start."""
    p = "llm_supervisor_"
    backend = FakeControlBackend()
    fams = scrape(backend)
    assert value(fams[p + "service_rolled_back"], p + "service_rolled_back", service="broken") == 0
    assert value(fams[p + "gpu_up"], p + "gpu_up", gpu="0") == 1
    pressure = fams[p + "gpu_pressure"]
    assert value(pressure, p + "gpu_pressure", gpu="0", level="normal") == 1
    assert value(pressure, p + "gpu_pressure", gpu="0", level="critical") == 0
    assert fams[p + "config_last_reload_successful"][0].value == 1
    assert value(fams[p + "orphans_killed"], p + "orphans_killed_total") == 0

    doc = backend.status()
    doc["services"]["broken"]["degraded"] = "rolled back: cuda_oom (reload)"
    doc["gpus"]["gpus"][0].update(pressure="critical", error="GPU is lost")
    doc["reload"]["result"] = "rejected"
    doc["daemon"]["orphans_killed"] = 3
    doc["daemon"]["engines_adopted"] = 2
    doc["services"]["qwen3-8b"].update(state="starting", progress={"phase": "x", "elapsed": 42.5})
    fams = scrape(StatusOnly(doc))
    assert value(fams[p + "service_rolled_back"], p + "service_rolled_back", service="broken") == 1
    assert value(fams[p + "gpu_up"], p + "gpu_up", gpu="0") == 0
    assert value(fams[p + "gpu_pressure"], p + "gpu_pressure", gpu="0", level="critical") == 1
    assert fams[p + "config_last_reload_successful"][0].value == 0
    assert value(fams[p + "orphans_killed"], p + "orphans_killed_total") == 3
    assert value(fams[p + "engines_adopted"], p + "engines_adopted_total") == 2
    loading = fams[p + "service_start_elapsed_seconds"]
    assert [(s.labels, s.value) for s in loading] == [({"service": "qwen3-8b"}, 42.5)]
