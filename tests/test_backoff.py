"""The restart policy is a pure function: table-tested."""

from __future__ import annotations

import pytest

from llm_supervisor.service.backoff import backoff_delay, decide_restart
from llm_supervisor.service.states import ALLOWED, State


@pytest.mark.parametrize(
    ("failures", "rand", "expected"),
    [
        (0, 0.5, 0.0),
        (1, 0.5, 1.0),
        (2, 0.5, 2.0),
        (3, 0.5, 4.0),
        (7, 0.5, 60.0),  # 64 capped
        (3, 0.0, 3.2),  # -20 % jitter
        (3, 1.0, 4.8),  # +20 % jitter
        (50, 0.5, 60.0),  # no overflow
    ],
)
def test_backoff_delay(failures: int, rand: float, expected: float) -> None:
    assert backoff_delay(failures, 1.0, 60.0, 0.2, rand) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("earlier", "now", "immediate", "fatal", "delay", "count"),
    [
        ([], 100.0, False, False, 1.0, 1),
        ([], 100.0, True, False, 0.0, 1),  # first crash after serving: at once
        ([99.0], 100.0, True, False, 2.0, 2),
        ([97.0, 98.0, 99.0], 100.0, False, False, 8.0, 4),
        ([96.0, 97.0, 98.0, 99.0], 100.0, False, True, 0.0, 5),
        ([1.0, 2.0, 3.0, 4.0], 1000.0, False, False, 1.0, 1),  # old failures left the window
    ],
)
def test_decide_restart(
    earlier: list[float], now: float, immediate: bool, fatal: bool, delay: float, count: int
) -> None:
    decision = decide_restart(
        earlier, now, max_failures=5, window=600.0, initial=1.0, cap=60.0, jitter=0.2,
        rand=0.5, immediate_first=immediate,
    )  # fmt: skip
    assert (decision.fatal, decision.failures_in_window) == (fatal, count)
    assert decision.delay == pytest.approx(delay)


def test_every_state_reachable_and_fatal_only_left_by_start_or_stop() -> None:
    reachable = {new for targets in ALLOWED.values() for new in targets}
    assert reachable == set(State)
    assert ALLOWED[State.FATAL] == {State.STARTING, State.STOPPED}
