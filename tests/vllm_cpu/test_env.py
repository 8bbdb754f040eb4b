"""The CPU-vLLM tier's own plumbing: example-derived argv, cached venv and tiny model.

No vLLM server is started here (each start costs about a minute); the daemon-level tests do.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from llm_supervisor.config.load import load_config
from llm_supervisor.config.models import ServiceConfig, ServiceSpec
from llm_supervisor.engines.vllm import VllmEngine

from . import support
from .support import API_MODULE, cpu_vllm_service, write_cpu_vllm_config


def test_example_service_becomes_the_module_entry_point_argv(tmp_path: Path) -> None:
    python, model = tmp_path / "venv/bin/python", tmp_path / "model"
    entry = cpu_vllm_service(18123, python=python, model=model, args={"max-model-len": 512})
    spec = ServiceSpec.model_validate(entry)
    svc = ServiceConfig(name="tiny", spec=spec, gpus=(), source="test")
    assert VllmEngine().argv(svc) == [
        str(python), "-m", API_MODULE, "--model", str(model), "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", "18123", "--max-model-len", "512",
    ]  # fmt: skip
    assert spec.env == {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1",
                        "HF_HUB_OFFLINE": "1"}  # fmt: skip


def test_written_config_dir_loads(tmp_path: Path) -> None:
    entry = cpu_vllm_service(18124, python=Path("/x/python"), model=Path("/x/model"))
    config, _ = load_config(write_cpu_vllm_config(tmp_path / "cfg", {"tiny": entry}))
    assert config.services["tiny"].spec.port == 18124


@pytest.mark.vllm
def test_venv_and_model_are_cached_and_fit_the_cpu_kernels(
    vllm_python: Path, tiny_model: Path
) -> None:
    assert vllm_python.exists()
    config = json.loads((tiny_model / "config.json").read_text())
    # head_dim 16 is rejected by the CPU attention kernels; 2048 is what tests exceed.
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    assert config["max_position_embeddings"] == 2048
    started = time.monotonic()
    # The stamp short-circuits: no torch import, well under a second.
    assert support.tiny_model(vllm_python) == tiny_model
    assert time.monotonic() - started < 5.0
