"""Threads the daemon starts for blocking calls (NVML, /proc scans)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from ..logsetup import get_logger

log = get_logger(__name__)

# Comma-separated thread names whose start fails as under a pids limit (chaos tests: root,
# which CI runs as, is exempt from RLIMIT_NPROC, so the limit itself cannot be used there).
FAULT_ENV = "LLM_SUPERVISOR_FAIL_THREADS"


def start_thread(target: Callable[[], object], name: str) -> RuntimeError | None:
    """Start a daemon thread; return the error instead of raising it when the OS refuses
    (pids limit, RLIMIT_NPROC): that is an error of the component, not the daemon's end."""
    try:
        if name in os.environ.get(FAULT_ENV, "").split(","):
            raise RuntimeError(f"can't start new thread ({FAULT_ENV})")
        threading.Thread(target=target, name=name, daemon=True).start()
    except RuntimeError as exc:
        log.error("thread.start_failed", thread=name, error=str(exc))
        return exc
    return None
