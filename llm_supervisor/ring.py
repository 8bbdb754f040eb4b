"""A bounded history with live followers: a service's output and the daemon's events.

The ring keeps the last ``size`` items and hands each new one to every follower. A follower
subscribes when it is created, not at its first read, so nothing slips in between a
``tail`` and the first item; ``aclose()`` unsubscribes it whether or not it was ever read
(a client that leaves at once must not stay subscribed). A follower that cannot keep up
loses its oldest items, never memory.

Items may be appended from worker threads (events logged inside ``to_thread``): the ring is
guarded by a lock, and a follower on another loop is fed through that loop's
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class _Subscriber(Generic[T]):
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[T]

    def offer(self, item: T) -> None:
        """Runs in the subscriber's loop."""
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(item)


class Ring(Generic[T]):
    def __init__(
        self, size: int, follower_queue: int, on_append: Callable[[T], None] | None = None
    ) -> None:
        self._items: deque[T] = deque(maxlen=size)
        self._subscribers: set[_Subscriber[T]] = set()
        self._follower_queue = follower_queue
        self._on_append = on_append
        # Re-entrant: a subclass numbers an item and appends it under one hold.
        self._lock = threading.RLock()

    def append(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
            subscribers = list(self._subscribers) if self._subscribers else None
        if self._on_append is not None:
            self._on_append(item)
        if subscribers is None:
            return  # the common case (nobody follows): a flooding engine costs little
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for sub in subscribers:
            if sub.loop is here:
                sub.offer(item)  # the common case: no wake-up through the loop's self-pipe
            else:
                with contextlib.suppress(RuntimeError):  # that loop is closed: it is leaving
                    sub.loop.call_soon_threadsafe(sub.offer, item)

    def items(self) -> list[T]:
        """Everything kept, oldest first."""
        with self._lock:
            return list(self._items)

    def follow(self) -> Follow[T]:
        """New items from now on, until ``aclose()``."""
        sub = _Subscriber[T](asyncio.get_running_loop(), asyncio.Queue(self._follower_queue))
        with self._lock:
            self._subscribers.add(sub)
        return Follow(self, sub)

    def _unsubscribe(self, sub: _Subscriber[T]) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class Follow(Generic[T]):
    """An async iterator of new items; ``aclose()`` unsubscribes (also if never read)."""

    def __init__(self, ring: Ring[T], sub: _Subscriber[T]) -> None:
        self._ring = ring
        self._sub = sub

    def __aiter__(self) -> Follow[T]:
        return self

    async def __anext__(self) -> T:
        return await self._sub.queue.get()

    async def aclose(self) -> None:
        self._ring._unsubscribe(self._sub)
