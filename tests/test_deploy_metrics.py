"""The alerting rules and the Grafana dashboard in deploy/ use only metrics the daemon exports.

A rule or panel on a misspelt or renamed metric fails silently in production (an alert that
never fires, an empty graph), so the names are checked against a real scrape: the daemon as a
subprocess with a GPU (fake NVML), a vLLM-like and an Ollama-like engine, and the gateway
after one request through it. Every dashboard query must also be valid PromQL (promtool).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .daemon_harness import (
    DaemonProcess,
    fake_ollama,
    fake_vllm,
    free_port,
    profile_text,
    run_daemon,
)
from .test_deploy_prometheus import promtool_path

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "llm-supervisor.json"
NAME = re.compile(r"\bllm_supervisor_[a-z0-9_]+")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$instance": ".*"}


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels") or [])

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets") or []]
    variables = [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs + variables


def exported(metrics_text: str) -> set[str]:
    """Series names a PromQL query can use, from the scrape's families (empty ones too)."""
    return {
        family.name + suffix
        for family in text_string_to_metric_families(metrics_text)
        for suffix in SUFFIXES.get(family.type, ("",))
    }


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("deploy")
    config = root / "profiles"
    config.mkdir()
    services = {
        "qwen": fake_vllm(free_port(), "Qwen/Qwen3-8B", args={"gpu-memory-utilization": 0.3}),
        "ollama": fake_ollama(free_port(), ["llama3.2:3b"]),
    }
    (config / "gpu0.yaml").write_text(profile_text(services, gpu=0))
    nvml = root / "nvml.json"
    nvml.write_text(json.dumps({"devices": [{"uuid": "GPU-0", "memory_total": "80GiB"}]}))
    with run_daemon(config, gateway=True, env={"LLM_SUPERVISOR_FAKE_NVML": str(nvml)}) as daemon:
        body = {"model": "Qwen/Qwen3-8B", "prompt": "hi", "max_tokens": 2}
        response = httpx.post(f"{daemon.gateway_url}/v1/completions", json=body, timeout=30)
        assert response.status_code == 200, response.text
        return metrics(daemon)


def metrics(daemon: DaemonProcess) -> str:
    transport = httpx.HTTPTransport(uds=str(daemon.state_dir / "control.sock"))
    with httpx.Client(transport=transport, base_url="http://daemon") as client:
        response = client.get("/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def test_scrape_has_the_gateway_histograms(scrape: str) -> None:
    """The request through the gateway was timed. (The fake engine answers in one piece, so
    time to first byte is tested in test_gateway_latency.py against a streaming fake.)"""
    counts = {
        (sample.name, sample.labels.get("service"), sample.labels.get("route")): sample.value
        for family in text_string_to_metric_families(scrape)
        for sample in family.samples
        if sample.name.endswith("_seconds_count")
    }
    assert counts[("llm_supervisor_gateway_request_seconds_count", "qwen", "completion")] == 1
    assert "llm_supervisor_gateway_first_byte_seconds_count" in exported(scrape)


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_used_is_exported(scrape: str, source: str) -> None:
    exprs = rule_exprs() if source == "alerts" else dashboard_exprs()
    used = {name for expr in exprs for name in NAME.findall(expr)}
    assert len(used) >= 10, used  # the regex still finds them
    assert sorted(used - exported(scrape)) == []


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses PromQL only inside rule files: wrap each query in a recording rule."""
    promtool = promtool_path()
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        if expr.startswith("label_values("):  # Grafana's own function, not PromQL
            expr = expr.removeprefix("label_values(").split(",")[0]
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_panels_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys(), panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
