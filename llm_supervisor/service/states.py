"""The service state machine: states and the transitions allowed between them."""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    FATAL = "fatal"


S = State

# Every transition goes through Service._set_state, which refuses anything not listed here.
ALLOWED: dict[State, frozenset[State]] = {
    S.STOPPED: frozenset({S.STARTING, S.FATAL}),
    S.STARTING: frozenset({S.READY, S.STOPPING, S.BACKOFF, S.FATAL, S.STOPPED}),
    S.READY: frozenset({S.STOPPING, S.BACKOFF, S.FATAL}),
    S.STOPPING: frozenset({S.STOPPED, S.BACKOFF, S.FATAL}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED, S.FATAL}),
    S.FATAL: frozenset({S.STARTING, S.STOPPED}),
}


class InvalidTransition(RuntimeError):
    def __init__(self, old: State, new: State) -> None:
        super().__init__(f"invalid service state transition {old} -> {new}")
