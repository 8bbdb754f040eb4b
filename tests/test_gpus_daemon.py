"""`llm-supervisor gpus` through the daemon attributes GPU memory to services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_supervisor.gpu.fake import ENV_VAR

from .daemon_harness import fake_vllm, free_port, profile_text, run_daemon, wait_until

UUID = "GPU-0a0a0a0a-0000-4000-8000-000000000001"
pytestmark = pytest.mark.timeout(90)


def write_gpu(path: Path, processes: list[dict[str, object]]) -> None:
    device = {"uuid": UUID, "name": "Fake L40S", "memory_total": "48GiB", "processes": processes}
    path.write_text(json.dumps({"devices": [device]}))


def test_gpus_names_the_service_holding_memory(tmp_path: Path) -> None:
    nvml = tmp_path / "nvml.json"
    write_gpu(nvml, [])
    config = tmp_path / "config"
    config.mkdir()
    service = fake_vllm(free_port(), "qwen", args={"gpu-memory-utilization": 0.5})
    (config / "gpu0.yaml").write_text(profile_text({"qwen": service}, gpu=0))
    with run_daemon(config, env={ENV_VAR: str(nvml)}, extra_args=["--gpu-interval", "0.2"]) as d:
        pid = d.pids()["qwen"]
        write_gpu(nvml, [{"pid": pid, "used_memory": "20GiB"}, {"pid": 1, "used_memory": "1GiB"}])

        def attributed() -> dict[str, object] | None:
            data = json.loads(d.cli("gpus", "--json").stdout)
            gpu = data["gpus"][0]
            return gpu if gpu["services"] else None

        gpu = wait_until(attributed, timeout=20, what="GPU memory attributed to qwen")
        assert gpu["services"] == {"qwen": 20 * 2**30}
        assert {p["pid"]: p["service"] for p in gpu["processes"]} == {pid: "qwen", 1: None}
        text = d.cli("gpus").stdout
        assert "GPU 0  Fake L40S" in text and "qwen" in text
