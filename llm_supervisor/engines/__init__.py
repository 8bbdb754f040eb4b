"""Engine adapters: how to launch each kind of server and how to tell that it is ready."""

from __future__ import annotations

from .base import Engine
from .command import CommandEngine
from .ollama import OllamaEngine
from .vllm import VllmEngine

ENGINES: dict[str, Engine] = {
    "vllm": VllmEngine(),
    "ollama": OllamaEngine(),
    "command": CommandEngine(),
}


def engine_for(kind: str) -> Engine:
    return ENGINES[kind]


__all__ = ["ENGINES", "Engine", "engine_for"]
