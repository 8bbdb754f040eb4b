"""Restart policy as pure functions: how long to wait, and when to give up."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def backoff_delay(failures: int, initial: float, cap: float, jitter: float, rand: float) -> float:
    """Exponential delay for the n-th consecutive failure (1-based), with jitter and a cap.

    ``rand`` in [0, 1) comes from the caller so the function stays pure; ``jitter`` is the
    fraction the delay may move either way (0.2 → ±20 %). The cap applies after jitter.
    """
    if failures < 1:
        return 0.0
    base = initial * float(2 ** min(failures - 1, 30))
    spread = 1.0 + jitter * (2.0 * rand - 1.0)
    return min(cap, base * spread)


@dataclass(frozen=True)
class RestartDecision:
    fatal: bool
    delay: float
    failures_in_window: int


def decide_restart(
    failure_times: Sequence[float],
    now: float,
    *,
    max_failures: int,
    window: float,
    initial: float,
    cap: float,
    jitter: float,
    rand: float,
    immediate_first: bool = False,
) -> RestartDecision:
    """After a failure at ``now``: back off, or give up when too many fell in the window.

    ``failure_times`` are the earlier failures since the last stable run, oldest first.
    With ``immediate_first``, the first failure of a run that had become ready restarts at
    once: a crash after serving is not a start-up loop, and waiting only loses requests.
    """
    recent = [t for t in failure_times if now - t <= window] + [now]
    if len(recent) >= max_failures:
        return RestartDecision(True, 0.0, len(recent))
    if immediate_first and len(recent) == 1:
        return RestartDecision(False, 0.0, 1)
    delay = backoff_delay(len(recent), initial, cap, jitter, rand)
    return RestartDecision(False, delay, len(recent))
