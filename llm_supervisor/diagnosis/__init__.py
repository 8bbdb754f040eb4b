"""Crash diagnosis: classify an engine's recent output into a cause and a one-line hint.

from llm_supervisor.diagnosis import diagnose, diagnose_exit
d = diagnose_exit(tail_text, "vllm", exit_code=1, signal=None)
d.cause, d.hint, d.line, d.numbers   # e.g. "kv_cache_insufficient", "set max-model-len …"
"""

from __future__ import annotations

from .classify import diagnose, diagnose_exit
from .model import CAUSES, UNKNOWN, Diagnosis

# The daemon passes at most this much of an engine's latest output.
TAIL_BYTES = 64 * 1024

__all__ = ["CAUSES", "TAIL_BYTES", "UNKNOWN", "Diagnosis", "diagnose", "diagnose_exit"]
