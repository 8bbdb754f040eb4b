"""The result of a crash diagnosis and the names of the causes it can report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Causes, from the most to the least specific. The names are part of the status schema
# (`last_exit.cause`) and of `diagnose --json`; add new ones, never rename.
KV_CACHE_INSUFFICIENT = "kv_cache_insufficient"
INSUFFICIENT_FREE_MEMORY = "insufficient_free_memory"
MAX_MODEL_LEN_TOO_LARGE = "max_model_len_too_large"
QUANTIZATION_MISMATCH = "quantization_mismatch"
UNSUPPORTED_GPU = "unsupported_gpu"
MODEL_ACCESS_DENIED = "model_access_denied"
MODEL_NOT_FOUND = "model_not_found"
UNSUPPORTED_MODEL = "unsupported_model"
PORT_IN_USE = "port_in_use"
CUDA_OOM = "cuda_oom"
HOST_OOM = "host_oom"
INVALID_ARGUMENT = "invalid_argument"
EXECUTABLE_MISSING = "executable_missing"
KILLED = "killed"
ENGINE_DEAD = "engine_dead"
UNEXPECTED_EXIT = "unexpected_exit"
STARTUP_TIMEOUT = "startup_timeout"  # the supervisor stopped it: not ready in time
UNRESPONSIVE = "unresponsive"  # the supervisor stopped it: liveness probes failed
UNKNOWN = "unknown"

CAUSES: tuple[str, ...] = (
    KV_CACHE_INSUFFICIENT,
    INSUFFICIENT_FREE_MEMORY,
    MAX_MODEL_LEN_TOO_LARGE,
    QUANTIZATION_MISMATCH,
    UNSUPPORTED_GPU,
    MODEL_ACCESS_DENIED,
    MODEL_NOT_FOUND,
    UNSUPPORTED_MODEL,
    PORT_IN_USE,
    CUDA_OOM,
    HOST_OOM,
    INVALID_ARGUMENT,
    EXECUTABLE_MISSING,
    KILLED,
    ENGINE_DEAD,
    UNEXPECTED_EXIT,
    STARTUP_TIMEOUT,
    UNRESPONSIVE,
    UNKNOWN,
)

Number = float | int


@dataclass(frozen=True)
class Diagnosis:
    """Why an engine failed, what to do about it, and the evidence.

    ``line`` is the log line that decided the cause (None when the decision came from the
    exit status alone); ``numbers`` holds what was parsed from it, e.g.
    ``{"max_tokens_fit": 22256, "max_model_len": 32768}``.
    """

    cause: str
    hint: str
    line: str | None = None
    numbers: dict[str, Number] = field(default_factory=dict)

    @property
    def known(self) -> bool:
        return self.cause != UNKNOWN

    def to_json(self) -> dict[str, Any]:
        return {
            "cause": self.cause,
            "hint": self.hint,
            "line": self.line,
            "numbers": dict(self.numbers),
        }
