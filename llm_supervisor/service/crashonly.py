"""Crash-only loops: a long-running task that hits an unexpected exception resumes.

The daemon exists to keep engines alive unattended, so none of its loops may end silently:
an exception that escapes one (EMFILE from a /proc read, a thread that cannot start) is
logged with its traceback, counted, and the loop is entered again after a backoff, from
what it observes then. Only cancellation ends a guarded loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..logsetup import get_logger

log = get_logger(__name__)

INITIAL_DELAY = 0.1  # seconds before the first resume: most errors are transient
MAX_DELAY = 10.0  # a persistent error is retried (and logged) at most this often
STABLE_AFTER = 60.0  # a run this long without an error resets the backoff


@dataclass
class ErrorTrack:
    """Consecutive errors of one loop: the backoff before the next resume, and the log."""

    event: str
    initial: float = INITIAL_DELAY
    cap: float = MAX_DELAY
    stable_after: float = STABLE_AFTER
    clock: Callable[[], float] = time.monotonic
    consecutive: int = 0
    _last_error_at: float = field(default=float("-inf"), repr=False)
    _last_signature: str = field(default="", repr=False)

    def record(self, exc: BaseException, **context: object) -> float:
        """Log ``exc`` (traceback when it differs from the last one) and return the delay."""
        now = self.clock()
        if now - self._last_error_at > self.stable_after:
            self.consecutive = 0
        self._last_error_at = now
        self.consecutive += 1
        delay = min(self.cap, self.initial * 2.0 ** min(self.consecutive - 1, 20))
        signature = f"{type(exc).__name__}: {exc}"
        if signature != self._last_signature:
            # The traceback once; the same error again is one line with its count.
            log.error(self.event, error=signature, resume_in=delay, exc_info=exc, **context)
        else:
            log.error(self.event, error=signature, resume_in=delay, repeated=self.consecutive,
                      **context)  # fmt: skip
        self._last_signature = signature
        return delay


async def crash_only(
    name: str,
    run: Callable[[], Awaitable[object]],
    errors: Counter[str],
    *,
    event: str = "daemon.task_error",
    track: ErrorTrack | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Run ``run()`` until it returns; each exception is logged, counted in ``errors[name]``
    and followed by a new ``run()`` after a growing delay. Cancellation passes through."""
    track = track or ErrorTrack(event)
    while True:
        try:
            await run()
            return
        except Exception as exc:
            errors[name] += 1
            delay = track.record(exc, task=name)
        await sleep(delay)
