"""The daemon's recent structured events, in memory, for the status page and ``/v1/events``.

A structlog processor (``record_event``, installed by ``logsetup``) copies every event that
passes the level filter into one process-wide ring of the last ``RING_SIZE`` events and hands
it to live subscribers; then the event goes on to the renderer unchanged. Events get a
sequence number, so a client that reconnects (SSE ``Last-Event-ID``) asks for what it missed.

Events may be logged from worker threads (NVML calls run in ``to_thread``), so the ring is
guarded by a lock and subscribers are fed through their own loop's ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

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


@dataclass(eq=False)
class _Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event]

    def offer(self, event: Event) -> None:
        """Runs in the subscriber's loop. A reader that cannot keep up loses the oldest."""
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(event)


class EventRing:
    """The last ``size`` events plus subscribers that receive new ones as they come."""

    def __init__(self, size: int = RING_SIZE) -> None:
        self._events: deque[Event] = deque(maxlen=size)
        self._subscribers: set[_Subscriber] = set()
        self._lock = threading.Lock()
        self._seq = 0

    def record(self, fields: MutableMapping[str, Any]) -> Event:
        event = {k: _plain(v) for k, v in fields.items() if k not in _DROP}
        with self._lock:
            self._seq += 1
            event["seq"] = self._seq
            event.setdefault("time", time.time())
            self._events.append(event)
            subscribers = list(self._subscribers)
        for sub in subscribers:
            with contextlib.suppress(RuntimeError):  # that loop is closed: it is leaving
                sub.loop.call_soon_threadsafe(sub.offer, event)
        return event

    def tail(self, limit: int = RING_SIZE, after: int = 0) -> list[Event]:
        """Events with ``seq > after``, oldest first, at most the last ``limit`` of them."""
        with self._lock:
            found = [e for e in self._events if e["seq"] > after]
        return found[-limit:] if limit > 0 else []

    @property
    def last_seq(self) -> int:
        return self._seq

    def follow(self) -> EventFollow:
        """New events until closed. Subscribes now, at the call (not at the first read), so
        nothing is lost between ``tail()`` and the first ``__anext__``."""
        sub = _Subscriber(asyncio.get_running_loop(), asyncio.Queue(SUBSCRIBER_QUEUE))
        with self._lock:
            self._subscribers.add(sub)
        return EventFollow(self, sub)

    def _unsubscribe(self, sub: _Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def clear(self) -> None:
        """For tests."""
        with self._lock:
            self._events.clear()


class EventFollow:
    """An async iterator of new events; ``aclose()`` unsubscribes (also if never read)."""

    def __init__(self, ring: EventRing, sub: _Subscriber) -> None:
        self._ring = ring
        self._sub = sub

    def __aiter__(self) -> EventFollow:
        return self

    async def __anext__(self) -> Event:
        return await self._sub.queue.get()

    async def aclose(self) -> None:
        self._ring._unsubscribe(self._sub)


EVENTS = EventRing()


def record_event(_: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: copy the event into ``EVENTS``, pass it on unchanged."""
    fields = dict(event_dict)
    fields.setdefault("level", method)
    EVENTS.record(fields)
    return event_dict
