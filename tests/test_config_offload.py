"""Loading a big config directory in a child process gives what load_config gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_supervisor.config.load import load_config
from llm_supervisor.config.offload import load_config_off_loop
from llm_supervisor.errors import ConfigError

from .test_config_check import OLLAMA, VLLM, write_dir


async def test_child_process_returns_the_same_config_and_warnings(tmp_path: Path) -> None:
    write_dir(tmp_path, {"gpu0.yaml": VLLM, "gpu1.yaml": OLLAMA, "policy.yaml": "pin: [x]\n"})
    expected = load_config(tmp_path, {0: 2**30, 1: 2**30})
    got = await load_config_off_loop(tmp_path, {0: 2**30, 1: 2**30}, offload_bytes=0)
    assert got == expected
    assert [w.message for w in got[1]] == ["'x' is not offered by any service"]


async def test_child_process_errors_come_back_as_config_errors(tmp_path: Path) -> None:
    write_dir(tmp_path, {"gpu0.yaml": VLLM.replace("port: 8001", "port: 011434")})
    with pytest.raises(ConfigError) as expected:
        load_config(tmp_path)
    with pytest.raises(ConfigError) as got:
        await load_config_off_loop(tmp_path, offload_bytes=0)
    assert got.value.issues == expected.value.issues
    assert "octal number 4892" in str(got.value)


async def test_small_directory_loads_in_process(tmp_path: Path) -> None:
    write_dir(tmp_path, {"gpu0.yaml": VLLM})
    config, _ = await load_config_off_loop(tmp_path, timeout=0.001)  # a child could not
    assert list(config.services) == ["a"]
