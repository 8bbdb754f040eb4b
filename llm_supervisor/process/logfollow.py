"""Engine output that outlives the daemon: the engine writes its log file, the daemon follows it.

Engines write straight to ``<log-dir>/<service>.log`` (opened O_APPEND and handed over as
stdout/stderr), never to a pipe: a pipe whose reader died answers the next write with EPIPE,
and a Go program (Ollama) dies of SIGPIPE on its next log line, so a crashed or re-executed
daemon would take its engines down with it. The daemon follows the file into the ring buffer
(``logs -f``, load progress, crash diagnosis), reading with a cheap poll that speeds up while
output flows; a new daemon reads back the tail of the file, so output written while no daemon
ran is shown too.

Rotation is copytruncate (as logrotate's): copy the file to ``.1``, then truncate it. The
engine's O_APPEND writes land at the new end; only bytes written in the microseconds between
the last copy and the truncate are lost. Nothing rotates while no daemon runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from pathlib import Path

from ..logsetup import get_logger
from .logline import LogLine
from .output import CHUNK, OutputRing, decode, emit_lines

log = get_logger(__name__)

MAX_BYTES = 20 * 2**20  # rotate above this size
BACKUPS = 3  # name.log.1 … .3
TAIL_BYTES = 256 * 1024  # read back at adoption: the ring holds lines, not megabytes
POLL_MIN = 0.05  # seconds between reads while output flows
POLL_MAX = 0.5  # … and while the engine is quiet
MAX_READ = 4 * 2**20  # per poll, so a flooding engine cannot hold the event loop
DISK_CHECK_EVERY = 4  # quiet polls between checks for a full disk (one statvfs)


def open_log_for_append(path: Path) -> tuple[int, int] | None:
    """An O_APPEND fd for the engine and the file's size before it writes; None if unusable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        log.error("log.open_failed", path=str(path), error=str(exc))
        return None
    return fd, os.fstat(fd).st_size


class LogFollower:
    """Feeds what an engine appends to ``path`` into ``ring``; rotates the file by size."""

    def __init__(
        self,
        path: Path,
        ring: OutputRing,
        *,
        max_bytes: int = MAX_BYTES,
        backups: int = BACKUPS,
    ) -> None:
        self.path = path
        self.ring = ring
        self.max_bytes = max_bytes
        self.backups = backups
        self.offset = 0
        self._fd: int | None = None
        self._pending = b""
        self._task: asyncio.Task[None] | None = None
        self._skip_partial_line = False
        # While an engine loads, every line may be a new phase that `start --wait` shows:
        # poll at the fastest pace then, not only while output flows.
        self.eager = True
        self._full_reported = False
        self._error_reported = False

    def start(self, offset: int, *, tail: bool = False) -> None:
        """Follow from ``offset``; ``tail``: at most the last TAIL_BYTES after it (adoption)."""
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.error("log.follow_failed", path=str(self.path), error=str(exc))
            return
        size = os.fstat(self._fd).st_size
        if offset > size:  # rotated (truncated) since the offset was taken
            offset = 0
        if tail and size - offset > TAIL_BYTES:
            offset = size - TAIL_BYTES
            self._skip_partial_line = True
        self.offset = offset
        self._task = asyncio.create_task(self._run(), name=f"follow:{self.path.name}")

    async def drain(self) -> None:
        """Read everything written so far into the ring."""
        if self._fd is not None:
            while self._read() >= MAX_READ:
                await asyncio.sleep(0)

    async def stop(self) -> int:
        """Read what is left, stop following; returns the offset reached."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.drain()
        if self._pending:
            self.ring.append(LogLine(time.time(), "out", decode(self._pending)))
            self._pending = b""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        return self.offset

    async def _run(self) -> None:
        delay, quiet = POLL_MIN, 0
        while True:
            try:
                got = self._read()
                if self._fd is not None and os.fstat(self._fd).st_size > self.max_bytes:
                    self._rotate()  # also while a flood goes on: it never pauses for us
            except OSError as exc:  # crash-only: say so once, go on reading
                if not self._error_reported:
                    log.error("log.follow_failed", path=str(self.path), error=str(exc))
                self._error_reported = True
                got = 0
            quiet = 0 if got else quiet + 1
            if quiet and quiet % DISK_CHECK_EVERY == 0:
                self._check_disk()
            delay = POLL_MIN if got or self.eager else min(delay * 2, POLL_MAX)
            await asyncio.sleep(delay)

    def _read(self) -> int:
        """Read from the offset to the end (at most MAX_READ); the number of bytes read."""
        fd = self._fd
        if fd is None:
            return 0
        if os.fstat(fd).st_size < self.offset:  # truncated (by us or an outside copytruncate)
            self.offset, self._pending = 0, b""
        total = 0
        while total < MAX_READ and (chunk := os.pread(fd, CHUNK, self.offset)):
            self.offset += len(chunk)
            total += len(chunk)
            if self._skip_partial_line:
                _, _, chunk = chunk.partition(b"\n")
                self._skip_partial_line = False
            self._pending = emit_lines(self._pending + chunk, self.ring, "out")
        return total

    def _rotate(self) -> None:
        """copytruncate: shift the backups, copy the file to .1, truncate it to zero."""
        for i in range(self.backups, 1, -1):
            newer = self.path.with_name(f"{self.path.name}.{i - 1}")
            if newer.exists():
                newer.replace(self.path.with_name(f"{self.path.name}.{i}"))
        first = self.path.with_name(f"{self.path.name}.1")
        shutil.copyfile(self.path, first)
        copied = first.stat().st_size
        assert self._fd is not None
        with first.open("ab") as backup:  # what arrived during the copy
            while chunk := os.pread(self._fd, CHUNK, copied):
                backup.write(chunk)
                copied += len(chunk)
        os.truncate(self.path, 0)
        self._read()  # lines that came with the copy's tail reach the ring too
        self.offset, self._pending = 0, b""
        log.info("log.rotated", path=str(self.path), bytes=copied)

    def _check_disk(self) -> None:
        """A full disk makes the engine's own writes fail, unseen by us: report it."""
        if self._fd is None:
            return
        try:
            full = os.fstatvfs(self._fd).f_bavail == 0
        except OSError:
            return
        if full and not self._full_reported:
            log.error("log.write_failed", path=str(self.path), error="No space left on device")
        self._full_reported = full
