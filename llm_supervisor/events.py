"""The daemon's recent structured events, in memory, for the status page and ``/v1/events``.

A structlog processor (``record_event``, installed by ``logsetup``) copies every event that
passes the level filter into one process-wide ring of the last ``RING_SIZE`` events and hands
it to live subscribers; then the event goes on to the renderer unchanged. Events get a
sequence number, so a client that reconnects (SSE ``Last-Event-ID``) asks for what it missed.

Events may be logged from worker threads (NVML calls run in ``to_thread``); the ring
(``ring.Ring``, the same one behind a service's output) is safe for that.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import Any

from .ring import Ring

RING_SIZE = 500
SUBSCRIBER_QUEUE = 1000
MAX_VALUE_CHARS = 2000
# Fields structlog adds that the page does not need; the exception text is kept.
_DROP = {"_record", "_from_structlog"}

Event = dict[str, Any]


def _plain(value: Any) -> Any:
    """JSON-safe copy: containers kept, anything else as text (cut: a page shows it)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value[:MAX_VALUE_CHARS]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return str(value)[:MAX_VALUE_CHARS]


class EventRing(Ring[Event]):
    """The last ``size`` events plus followers that receive new ones as they come."""

    def __init__(self, size: int = RING_SIZE) -> None:
        super().__init__(size, SUBSCRIBER_QUEUE)
        self._seq = 0

    def record(self, fields: MutableMapping[str, Any]) -> Event:
        event = {k: _plain(v) for k, v in fields.items() if k not in _DROP}
        with self._lock:  # numbered and appended in one hold: seq order is ring order
            self._seq += 1
            event["seq"] = self._seq
            event.setdefault("time", time.time())
            self.append(event)
        return event

    def tail(self, limit: int = RING_SIZE, after: int = 0) -> list[Event]:
        """Events with ``seq > after``, oldest first, at most the last ``limit`` of them."""
        found = [e for e in self.items() if e["seq"] > after]
        return found[-limit:] if limit > 0 else []

    @property
    def last_seq(self) -> int:
        return self._seq


EVENTS = EventRing()


def record_event(_: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: copy the event into ``EVENTS``, pass it on unchanged."""
    fields = dict(event_dict)
    fields.setdefault("level", method)
    EVENTS.record(fields)
    return event_dict
