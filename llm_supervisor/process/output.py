"""Child output: read in chunks, split on \\n and \\r, kept in a ring and a rotating file.

Chunked reads (not readline) because tqdm progress bars write ``\\r`` without newlines and
engines can print single lines far beyond asyncio's 64 KiB readline limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from ..logsetup import get_logger
from ..ring import Ring
from .logline import LogLine

log = get_logger(__name__)

CHUNK = 64 * 1024
_LINE_END = re.compile(rb"[\r\n]")
MAX_LINE = 16 * 1024  # longer lines are cut in the ring (the file keeps them whole)
LOG_MODE = 0o640


class RotatingFile:
    """Append-only file with size rotation (name.log → name.log.1 … .N)."""

    def __init__(self, path: Path, max_bytes: int = 20 * 2**20, backups: int = 3) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._failed = False
        self.secrets: tuple[bytes, ...] = ()  # masked as *** before they reach the disk
        self._size = path.stat().st_size if path.exists() else 0
        if self._size:
            with contextlib.suppress(OSError):  # a log from an older version was 0644
                os.chmod(path, LOG_MODE)

    def write(self, data: bytes) -> None:
        for secret in self.secrets:
            data = data.replace(secret, b"***")
        try:
            if self._size + len(data) > self.max_bytes and self._size > 0:
                self._rotate()
            # 0640: engine output can carry prompts and paths; the group (adm, an operators'
            # group) may read it, others may not. The mode only applies when it is created.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)
            with open(fd, "ab") as fh:
                fh.write(data)
            self._size += len(data)
            self._failed = False
        except OSError as exc:
            # A full disk must not stop the pump (the engine would block on a full pipe).
            if not self._failed:
                log.error("log.write_failed", path=str(self.path), error=str(exc))
            self._failed = True

    def _rotate(self) -> None:
        for i in range(self.backups, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            newer = self.path.with_name(f"{self.path.name}.{i - 1}") if i > 1 else self.path
            if newer.exists():
                newer.replace(older)
        self._size = 0


class OutputRing(Ring[LogLine]):
    """The last lines of a service's output, shared by every run of the service.
    ``on_line`` sees each line as it comes (the Service reads load progress from it)."""

    def __init__(
        self,
        maxlen: int = 2000,
        follower_queue: int = 10_000,
        on_line: Callable[[LogLine], None] | None = None,
    ) -> None:
        super().__init__(maxlen, follower_queue, on_line)
        self.secrets: tuple[str, ...] = ()  # masked as *** in every line kept or sent

    def append(self, line: LogLine) -> None:
        for secret in self.secrets:
            if secret in line.text:
                line = LogLine(line.ts, line.stream, line.text.replace(secret, "***"))
        super().append(line)

    def tail(self, lines: int | None = None, since: float | None = None) -> list[LogLine]:
        selected = [ln for ln in self.items() if since is None or ln.ts >= since]
        return selected[-lines:] if lines else selected


async def pump(
    stream: asyncio.StreamReader, ring: OutputRing, sink: RotatingFile | None, name: str = "out"
) -> None:
    """Copy a child's output into the ring and the file until EOF."""
    pending = b""
    while chunk := await stream.read(CHUNK):
        if sink is not None:
            sink.write(chunk)
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
