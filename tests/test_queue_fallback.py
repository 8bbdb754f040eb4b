"""Workshops: where a waiting request stands, fallbacks when a model cannot be served, and
warm-up before the first client. Through the real daemon, its gateway and fake engines."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from llm_supervisor.config.load import load_config
from llm_supervisor.errors import ConfigError
from llm_supervisor.gateway.queue import WaitingRoom, retry_after
from llm_supervisor.service.starts import StartHistory, estimate_eta
from tests.daemon_harness import (
    DaemonProcess,
    fake_ollama,
    fake_vllm,
    free_port,
    profile_text,
    run_daemon,
    wait_until,
)

ON_DEMAND_SLOW = {"start": "on-demand"}


def write_config(tmp_path: Path, services: dict[str, Any], policy: dict[str, Any]) -> Path:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "cpu.yaml").write_text(profile_text(services))
    (cfg / "policy.yaml").write_text(yaml.safe_dump(policy))
    return cfg


def chat(daemon: DaemonProcess, model: str, timeout: float = 30.0) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{daemon.gateway_url}/v1/chat/completions", json=body, timeout=timeout)


def in_threads(n: int, fn: Callable[[], httpx.Response]) -> list[concurrent.futures.Future[Any]]:
    pool = concurrent.futures.ThreadPoolExecutor(n)
    futures = [pool.submit(fn) for _ in range(n)]
    pool.shutdown(wait=False)
    return futures


# -- pure pieces ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed", "last", "fraction", "phase_elapsed", "expected"),
    [
        (None, None, None, None, None),  # nothing known
        (10.0, 60.0, None, None, 50.0),  # the last start took a minute
        (70.0, 60.0, None, None, 0.0),  # slower than last time: any moment now
        (4.0, None, 0.25, 4.0, 12.0),  # a quarter of the weights in 4 s
        (4.0, 60.0, 0.25, 4.0, 56.0),  # both: the larger (later phases follow the weights)
        (4.0, None, 0.01, 4.0, None),  # 1 % says too little to extrapolate
        (4.0, None, 1.0, 4.0, None),  # a finished phase says nothing of the next
    ],
)
def test_eta_estimates(
    elapsed: float | None,
    last: float | None,
    fraction: float | None,
    phase_elapsed: float | None,
    expected: float | None,
) -> None:
    assert estimate_eta(elapsed, last, fraction, phase_elapsed) == expected


def test_start_history_survives_a_new_instance_and_ignores_junk(tmp_path: Path) -> None:
    path = tmp_path / "starts.json"
    StartHistory(path).record("big", 95.25)
    assert StartHistory(path).last("big") == 95.25
    path.write_text("{not json")
    assert StartHistory(path).last("big") is None
    path.write_text(json.dumps({"big": "fast", "small": -3, "ok": 2}))
    assert StartHistory(path).last("ok") == 2.0 and StartHistory(path).last("small") is None


def test_start_history_on_a_read_only_dir_keeps_the_estimate_in_memory(tmp_path: Path) -> None:
    history = StartHistory(tmp_path / "missing-dir" / "starts.json")
    history.record("big", 12.0)  # the write fails; supervision must not notice
    assert history.last("big") == 12.0


def test_waiting_room_counts_and_forgets() -> None:
    room = WaitingRoom()
    with room.hold("a"), room.hold("a"):
        assert room.counts["a"] == 2 and room.is_full("a", 2) and not room.is_full("b", 1)
    assert "a" not in room.counts
    assert [retry_after(None, 5), retry_after(0.2, 5), retry_after(94.1, 5)] == ["5", "1", "95"]


@pytest.mark.parametrize(
    ("fallbacks", "loop"),
    [
        ({"a": ["a"]}, "a -> a"),
        ({"a": ["b"], "b": ["a"]}, "a -> b -> a"),
        ({"a": ["x", "b"], "b": ["c"], "c": ["a"]}, "a -> b -> c -> a"),
    ],
)
def test_fallback_loops_are_config_errors(
    tmp_path: Path, fallbacks: dict[str, list[str]], loop: str
) -> None:
    services = {
        name: {"engine": "command", "model": name, "port": 9000 + i, "command": ["x"]}
        for i, name in enumerate("abcx")
    }
    cfg = write_config(tmp_path, services, {"fallbacks": fallbacks})
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    text = str(err.value)
    assert "policy.yaml:" in text and f"fallbacks form a loop: {loop}" in text


def test_fallback_chain_without_loop_is_valid(tmp_path: Path) -> None:
    services = {
        name: {"engine": "command", "model": name, "port": 9000 + i, "command": ["x"]}
        for i, name in enumerate("abc")
    }
    cfg = write_config(tmp_path, services, {"fallbacks": {"a": ["b", "c"], "b": ["c"]}})
    config, _ = load_config(cfg)
    assert config.policy.fallbacks == {"a": ("b", "c"), "b": ("c",)}


# -- through the daemon ----------------------------------------------------------------------


def test_waiting_requests_are_counted_with_an_eta_then_all_served(tmp_path: Path) -> None:
    port = free_port()
    slow = fake_vllm(port, "big", "--startup-delay", "3", "--loading-lines", **ON_DEMAND_SLOW)
    cfg = write_config(tmp_path, {"big": slow}, {})
    with run_daemon(cfg, gateway=True) as daemon:
        futures = in_threads(5, lambda: chat(daemon, "big"))
        status = daemon.wait_status(
            lambda s: s["services"]["big"]["waiting"] == 5 and s["services"]["big"]["eta_s"],
            what="5 waiting with an ETA",
        )
        assert status["services"]["big"]["state"] == "starting"
        queue = httpx.get(f"{daemon.gateway_url}/v1/queue", timeout=5).json()["models"]
        assert [(q["model"], q["service"], q["waiting"]) for q in queue] == [("big", "big", 5)]
        assert queue[0]["state"] == "starting" and queue[0]["eta_s"] is not None
        ollama_side = httpx.get(f"{daemon.gateway_url}/api/queue", timeout=5).json()["models"]
        assert [(q["model"], q["waiting"]) for q in ollama_side] == [("big", 5)]
        assert "5 requests waiting for the start" in daemon.cli("status").stdout
        assert 'llm_supervisor_requests_waiting{service="big"} 5.0' in scrape(daemon)
        assert [f.result(timeout=30).status_code for f in futures] == [200] * 5
        after = daemon.status()["services"]["big"]
        assert after["waiting"] == 0 and after["eta_s"] is None and after["in_flight"] == 0
        history = json.loads((daemon.state_dir / "starts.json").read_text())
        assert 2.5 < history["big"] < 15


def scrape(daemon: DaemonProcess) -> str:
    transport = httpx.HTTPTransport(uds=str(daemon.state_dir / "control.sock"))
    with httpx.Client(transport=transport) as client:
        return client.get("http://daemon/metrics", timeout=5).text


def test_more_waiting_than_max_waiting_get_503_with_retry_after(tmp_path: Path) -> None:
    port = free_port()
    slow = fake_vllm(port, "big", "--startup-delay", "3", **ON_DEMAND_SLOW)
    cfg = write_config(tmp_path, {"big": slow}, {"queue": {"max_waiting": 2}})
    with run_daemon(cfg, gateway=True) as daemon:
        futures = in_threads(2, lambda: chat(daemon, "big"))
        daemon.wait_status(lambda s: s["services"]["big"]["waiting"] == 2, what="2 waiting")
        refused = chat(daemon, "big")
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        message = refused.json()["error"]["message"]
        assert "2 requests already wait for service big" in message and "max_waiting" in message
        assert [f.result(timeout=30).status_code for f in futures] == [200, 200]


def test_fatal_service_is_served_by_its_fallback_with_a_header(tmp_path: Path) -> None:
    big_port, small_port = free_port(), free_port()
    broken = fake_vllm(
        big_port, "big", "--fail-with", "torch.OutOfMemoryError: CUDA out of memory",
        restart={"max_failures": 1},
    )  # fmt: skip
    services = {"big": broken, "small": fake_vllm(small_port, "small")}
    cfg = write_config(tmp_path, services, {"fallbacks": {"big": ["small"]}})
    with run_daemon(cfg, gateway=True, wait_ready=False) as daemon:
        daemon.wait_status(
            lambda s: (
                s["services"]["big"]["state"] == "fatal"
                and s["services"]["small"]["state"] == "ready"
            ),
            what="big fatal, small ready",
        )
        answers = [chat(daemon, "big") for _ in range(10)]
        assert [a.status_code for a in answers] == [200] * 10
        assert {a.headers["X-LLM-Supervisor-Fallback"] for a in answers} == {"big -> small"}
        assert {a.json()["model"] for a in answers} == {"small"}  # as the engine answered
        assert len(daemon.events("gateway.fallback")) == 10
        scraped = daemon.cli("status", "--json").stdout
        assert json.loads(scraped)["services"]["small"]["restarts"] == 0


def test_still_loading_after_fallback_after_is_served_by_the_fallback(tmp_path: Path) -> None:
    big_port, small_port = free_port(), free_port()
    services = {
        "big": fake_vllm(big_port, "big", "--startup-delay", "6", **ON_DEMAND_SLOW),
        "small": fake_vllm(small_port, "small"),
    }
    policy = {"fallbacks": {"big": ["small"]}, "fallback_after": "0.5s"}
    cfg = write_config(tmp_path, services, policy)
    with run_daemon(cfg, gateway=True) as daemon:
        answer = chat(daemon, "big", timeout=5)
        assert answer.status_code == 200
        assert answer.headers["X-LLM-Supervisor-Fallback"] == "big -> small"
        assert daemon.status()["services"]["big"]["state"] == "starting"  # the load goes on
        daemon.wait_ready(["big"], timeout=20)
        direct = chat(daemon, "big")
        assert direct.status_code == 200 and "X-LLM-Supervisor-Fallback" not in direct.headers


def test_fallback_outside_focus_is_not_used(tmp_path: Path) -> None:
    big_port, small_port = free_port(), free_port()
    broken = fake_vllm(big_port, "big", "--fail-with", "boom", restart={"max_failures": 1})
    services = {"big": broken, "small": fake_vllm(small_port, "small")}
    policy = {"fallbacks": {"big": ["small"]}, "focus": ["big"]}
    cfg = write_config(tmp_path, services, policy)
    with run_daemon(cfg, gateway=True, wait_ready=False) as daemon:
        daemon.wait_status(lambda s: s["services"]["big"]["state"] == "fatal", what="big fatal")
        answer = chat(daemon, "big")
        assert answer.status_code == 503 and "X-LLM-Supervisor-Fallback" not in answer.headers


def test_warmup_runs_before_the_service_counts_as_ready(tmp_path: Path) -> None:
    port = free_port()
    warm = fake_vllm(port, "big", "--first-request-delay", "1.0", warmup=True)
    cfg = write_config(tmp_path, {"big": warm}, {})
    with run_daemon(cfg, gateway=True, wait_ready=False) as daemon:
        wait_until(
            lambda: any("request POST /v1/completions" in ln for ln in _engine_log(daemon)),
            what="the warm-up request",
        )
        assert daemon.status()["services"]["big"]["state"] == "starting"  # still warming up
        daemon.wait_ready(["big"])
        warmup = daemon.status()["services"]["big"]["warmup"]
        assert warmup["ok"] is True and warmup["seconds"] >= 1.0
        sent = [ln for ln in _engine_log(daemon) if "request POST" in ln]
        assert len(sent) == 1 and '"max_tokens": 1' in sent[0] and '"model": "big"' in sent[0]


def test_ollama_warmup_loads_the_policy_models_when_ready(tmp_path: Path) -> None:
    port = free_port()
    services = {"ollama": fake_ollama(port, ["llama3.2:3b", "qwen3:8b"])}
    cfg = write_config(tmp_path, services, {"warmup": ["llama3.2:3b"]})
    with run_daemon(cfg, gateway=True) as daemon:
        warmup = daemon.status()["services"]["ollama"]["warmup"]
        assert warmup["ok"] is True
        loaded = httpx.get(f"{daemon.gateway_url}/api/ps", timeout=5).json()["models"]
        assert [m["name"] for m in loaded] == ["llama3.2:3b"]


def _engine_log(daemon: DaemonProcess) -> list[str]:
    path = daemon.log_dir / "big.log"
    return path.read_text(errors="replace").splitlines() if path.exists() else []
