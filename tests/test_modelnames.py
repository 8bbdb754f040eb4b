"""One answer to "is this model pinned?", with model names matched the way Ollama does."""

from __future__ import annotations

from typing import Any

import pytest

from llm_supervisor.config.modelnames import canonical_model_name, matches_model_pattern
from llm_supervisor.config.models import Config, Policy, ServiceConfig, ServiceSpec
from llm_supervisor.daemon.status import _model_row
from llm_supervisor.durations import FOREVER
from llm_supervisor.gateway.app import Gateway
from llm_supervisor.gateway.keepalive import rule_for
from llm_supervisor.gateway.relief import relieve
from llm_supervisor.gpu.pressure import PressureEvent

from .test_relief import Backend, RecordingClient

GIB = 2**30

# (what the policy says, what a client or /api/ps says): one model in Ollama's eyes.
SAME = [
    ("llama3.2", "llama3.2:latest"),
    ("llama3.2:latest", "llama3.2"),
    ("Llama3.2", "llama3.2:latest"),
    ("llama3.2:3B", "llama3.2:3b"),
    ("library/llama3.2", "llama3.2:latest"),
    ("registry.ollama.ai/library/llama3.2:latest", "llama3.2"),
]


@pytest.mark.parametrize(("pin", "model"), SAME)
def test_keep_alive_treats_the_model_as_pinned(pin: str, model: str) -> None:
    assert rule_for(model, Policy(pin=(pin,))) == ("pin", FOREVER)


@pytest.mark.parametrize(("pin", "model"), SAME)
def test_status_says_pinned(pin: str, model: str) -> None:
    row: dict[str, Any] = {"model": model, "service": "ollama", "loaded": True}
    assert _model_row(row, Config(policy=Policy(pin=(pin,))))["pinned"] is True


@pytest.mark.parametrize(("pin", "model"), SAME)
async def test_pressure_relief_keeps_the_pinned_model(pin: str, model: str) -> None:
    spec = ServiceSpec(engine="ollama", port=11435, models=(model, "other:1"))
    config = Config(
        services={"ollama": ServiceConfig(name="ollama", spec=spec, gpus=(0,), source="t")},
        policy=Policy(pin=(pin,)),
    )
    gateway = Gateway(Backend(config))
    gateway.client = RecordingClient()  # type: ignore[assignment]
    gateway.state.ps["ollama"] = [
        {"name": model, "size_vram": 60 * GIB},
        {"name": "other:1", "size_vram": 4 * GIB},
    ]
    event = PressureEvent(0, "GPU-x", "warning", "critical", int(79 * GIB), 80 * GIB)
    assert await relieve(gateway.state, gateway.client, config, event) == ["other:1"]


@pytest.mark.parametrize(
    ("pin", "model"),
    [("llama3.2", "llama3.2:3b"), ("llama3", "llama3.2"), ("other/llama3.2", "llama3.2")],
)
def test_different_models_are_not_pinned(pin: str, model: str) -> None:
    policy = Policy(pin=(pin,))
    assert rule_for(model, policy)[0] != "pin"
    row: dict[str, Any] = {"model": model}
    assert _model_row(row, Config(policy=policy))["pinned"] is False


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("Llama3.2:3B", "llama3.2:3b"),
        ("library/llama3.2", "llama3.2:latest"),
        ("registry.ollama.ai/library/llama3.2:1b", "llama3.2:1b"),
        ("https://registry.ollama.ai/library/llama3.2", "llama3.2:latest"),
        ("someone/llama3.2", "someone/llama3.2:latest"),
        ("hf.co/Bartowski/Qwen3-8B-GGUF:Q4_K_M", "hf.co/bartowski/qwen3-8b-gguf:q4_k_m"),
        ("example.com/library/x", "example.com/library/x:latest"),
        ("", ""),
    ],
)
def test_canonical_model_name(name: str, canonical: str) -> None:
    assert canonical_model_name(name) == canonical
    assert canonical_model_name(canonical) == canonical  # idempotent


@pytest.mark.parametrize(
    ("model", "pattern", "matches"),
    [
        ("gpt-oss:120b", "gpt-oss:*", True),
        ("GPT-OSS:120b", "gpt-oss:*", True),
        ("llava:13b", "llava*", True),
        ("llava", "llava:*", True),
        ("llama3.2", "llama3.2:latest", True),
        ("llama3.2:3b", "llama3.2", False),
        ("qwen", "llava*", False),
    ],
)
def test_matches_model_pattern(model: str, pattern: str, matches: bool) -> None:
    assert matches_model_pattern(model, pattern) is matches
