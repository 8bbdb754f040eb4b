"""Engine adapters: argv and environment built from a profile."""

from __future__ import annotations

from llm_supervisor.config.models import Policy, ServiceConfig, ServiceSpec
from llm_supervisor.engines import engine_for


def svc(**spec: object) -> ServiceConfig:
    return ServiceConfig(name="s", spec=ServiceSpec.model_validate(spec), gpus=(0,), source="t")


def test_vllm_argv_from_profile() -> None:
    config = svc(
        engine="vllm", model="Qwen/Qwen3-8B-AWQ", served_name="qwen3-8b", port=8001,
        args={"max-model-len": 16384, "enforce-eager": True, "disable-log-stats": False,
              "quantization": "awq_marlin"},
    )  # fmt: skip
    assert engine_for("vllm").argv(config) == [
        "vllm", "serve", "--model", "Qwen/Qwen3-8B-AWQ", "--served-model-name", "qwen3-8b",
        "--host", "127.0.0.1", "--port", "8001", "--max-model-len", "16384",
        "--enforce-eager", "--quantization", "awq_marlin",
    ]  # fmt: skip
    assert engine_for("vllm").env(config, Policy()) == {"PYTHONUNBUFFERED": "1"}


def test_command_override_replaces_executable() -> None:
    config = svc(engine="vllm", model="m", port=1, command=["/opt/vllm/bin/python", "-m", "x"])
    assert engine_for("vllm").argv(config)[:4] == ["/opt/vllm/bin/python", "-m", "x", "--model"]


def test_ollama_env_binds_loopback_and_policy_defaults() -> None:
    config = svc(engine="ollama", port=11435)
    policy = Policy.model_validate(
        {"keep_alive": {"default": "forever"}, "ollama_options": {"num_ctx": 8192}}
    )
    assert engine_for("ollama").argv(config) == ["ollama", "serve"]
    assert engine_for("ollama").env(config, policy) == {
        "OLLAMA_HOST": "127.0.0.1:11435",
        "OLLAMA_KEEP_ALIVE": "-1",
        "OLLAMA_CONTEXT_LENGTH": "8192",
    }
    thirty = Policy.model_validate({"keep_alive": {"default": "30m"}})
    assert engine_for("ollama").env(config, thirty)["OLLAMA_KEEP_ALIVE"] == "1800s"
