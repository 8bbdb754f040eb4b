"""Child output: read in chunks, split on \\n and \\r, kept in a ring buffer.

Chunked reads (not readline) because tqdm progress bars write ``\\r`` without newlines and
engines can print single lines far beyond asyncio's 64 KiB readline limit.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from ..logsetup import get_logger
from .logline import LogLine

log = get_logger(__name__)

CHUNK = 64 * 1024
_LINE_END = re.compile(rb"[\r\n]")
MAX_LINE = 16 * 1024  # longer lines are cut in the ring (the file keeps them whole)


class OutputRing:
    """The last lines of a service's output, shared by every run of the service."""

    def __init__(self, maxlen: int = 2000) -> None:
        self._lines: deque[LogLine] = deque(maxlen=maxlen)
        self._subscribers: set[asyncio.Queue[LogLine]] = set()
        self.listeners: list[Callable[[LogLine], None]] = []

    def append(self, line: LogLine) -> None:
        self._lines.append(line)
        for listener in self.listeners:
            listener(line)
        for queue in self._subscribers:
            if queue.qsize() < 10_000:  # a stalled follower loses lines, never memory
                queue.put_nowait(line)

    def tail(self, lines: int | None = None, since: float | None = None) -> list[LogLine]:
        selected = [ln for ln in self._lines if since is None or ln.ts >= since]
        return selected[-lines:] if lines else selected

    def follow(self) -> AsyncIterator[LogLine]:
        """New lines from now on. Subscribes at the call, so no line slips in between."""
        queue: asyncio.Queue[LogLine] = asyncio.Queue()
        self._subscribers.add(queue)

        async def lines() -> AsyncIterator[LogLine]:
            try:
                while True:
                    yield await queue.get()
            finally:
                self._subscribers.discard(queue)

        return lines()


async def pump(stream: asyncio.StreamReader, ring: OutputRing, name: str = "out") -> None:
    """Copy a child's output from a pipe into the ring until EOF (no log dir: tests)."""
    pending = b""
    while chunk := await stream.read(CHUNK):
        pending += chunk
        pending = emit_lines(pending, ring, name)
    if pending:
        ring.append(LogLine(time.time(), name, decode(pending)))


def emit_lines(buffer: bytes, ring: OutputRing, name: str) -> bytes:
    """Append every complete line in ``buffer`` and return the unfinished rest."""
    *complete, rest = _LINE_END.split(buffer)
    now = time.time()
    for part in complete:
        if part:  # "\r\n" and repeated "\r" leave empty pieces
            ring.append(LogLine(now, name, decode(part)))
    if len(rest) > MAX_LINE:  # a giant line: keep its head, drop the rest of this chunk
        ring.append(LogLine(now, name, decode(rest) + " …[cut]"))
        return b""
    return rest


def decode(data: bytes) -> str:
    return data[:MAX_LINE].decode("utf-8", errors="replace")
