"""Engine output that outlives the daemon: a spool file the engine writes and the daemon drains.

Engines never write to a pipe: a pipe whose reader died answers the next write with EPIPE,
and a Go program (Ollama) dies of SIGPIPE on its next log line, so a crashed or re-executed
daemon would take its engines down with it. Each engine writes to its spool instead,
``<state-dir>/spool/<service>.out`` (mode 0600, opened O_APPEND and handed over as
stdout/stderr). The daemon follows the spool: every chunk goes to the rotating, secret-masked
``<log-dir>/<service>.log`` (RotatingFile) and, as lines, to the ring buffer (``logs -f``,
load progress, crash diagnosis). What was read is punched out of the spool
(fallocate PUNCH_HOLE: the file keeps its size, the disk blocks are freed, the engine's
O_APPEND offset is untouched), so the spool holds only what nobody has read yet, such as the
output of an engine while no daemon ran; the next daemon finds it where the holes end.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import time
from pathlib import Path
from typing import Any

from ..logsetup import get_logger
from .logline import LogLine
from .output import CHUNK, OutputRing, RotatingFile, decode, emit_lines

log = get_logger(__name__)

POLL_MIN = 0.05  # seconds between reads while output flows (and while an engine loads)
POLL_MAX = 0.5  # … while a ready engine is quiet
MAX_READ = 4 * 2**20  # per poll, so a flooding engine cannot hold the event loop
DISK_CHECK_EVERY = 4  # quiet polls between checks for a full spool disk (one statvfs)
BLOCK = 4096  # holes are punched in whole blocks: a partial block would read back as zeros
TAIL_BYTES = 256 * 1024  # of the log file read back into a new daemon's ring
TRUNCATE_AT = 64 * 2**20  # without hole punching: truncate a fully read spool above this

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _load_fallocate() -> Any:
    """libc's fallocate(2); os has only posix_fallocate, which cannot punch holes."""
    try:
        func = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    func.restype = ctypes.c_int
    return func


_fallocate = _load_fallocate()


def punch(fd: int, length: int) -> int:
    """Free the first ``length`` bytes of the file (rounded down to whole blocks); 0 or an
    errno."""
    length -= length % BLOCK
    if length <= 0:
        return 0
    if _fallocate is None:
        return errno.ENOSYS
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    return 0 if _fallocate(fd, mode, 0, length) == 0 else ctypes.get_errno()


def read_tail(path: Path, ring: OutputRing, max_bytes: int = TAIL_BYTES) -> None:
    """The last lines of a log file into ``ring``: a daemon that adopts an engine (after a
    crash or an upgrade) shows its history, not only what comes next. Whole lines only."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - max_bytes))
            data = fh.read(max_bytes)
    except OSError:
        return
    if size > max_bytes:
        data = data.partition(b"\n")[2]
    rest = emit_lines(data, ring, "out")
    if rest:
        ring.append(LogLine(time.time(), "out", decode(rest)))


def open_spool(path: Path) -> tuple[int, int] | None:
    """An O_APPEND fd for the engine and where its output will start; None if unusable
    (read-only state dir: the engine then gets a pipe, and cannot outlive the daemon)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        log.error("spool.open_failed", path=str(path), error=str(exc))
        return None
    return fd, os.fstat(fd).st_size


class LogFollower:
    """Drains an engine's spool into the ring and the log file, punching out what was read."""

    def __init__(self, path: Path, ring: OutputRing, sink: RotatingFile | None) -> None:
        self.path = path
        self.ring = ring
        self.sink = sink
        self.offset = 0
        self._fd: int | None = None
        self._pending = b""
        self._task: asyncio.Task[None] | None = None
        self._punched = 0
        self._punch_error = 0
        # While an engine loads, every line may be a new phase that `start --wait` shows:
        # poll at the fastest pace then, not only while output flows.
        self.eager = True
        self._full_reported = False
        self._error_reported = False

    def start(self, offset: int) -> None:
        """Follow from ``offset``, or from where the punched holes end if that is later
        (after a crash the last recorded offset is behind what was read)."""
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            log.error("spool.follow_failed", path=str(self.path), error=str(exc))
            return
        size = os.fstat(self._fd).st_size
        try:
            first_data = os.lseek(self._fd, 0, os.SEEK_DATA)
        except OSError:  # ENXIO: nothing but holes
            first_data = size
        self.offset = self._punched = min(max(offset, first_data), size)
        self._task = asyncio.create_task(self._run(), name=f"follow:{self.path.name}")

    async def drain(self) -> None:
        """Read everything written so far into the ring and the log file."""
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
            except OSError as exc:  # crash-only: say so once, go on reading
                if not self._error_reported:
                    log.error("spool.follow_failed", path=str(self.path), error=str(exc))
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
        total = 0
        while total < MAX_READ and (chunk := os.pread(fd, CHUNK, self.offset)):
            self.offset += len(chunk)
            total += len(chunk)
            if self.sink is not None:
                self.sink.write(chunk)
            self._pending = emit_lines(self._pending + chunk, self.ring, "out")
        if total:
            self._free(fd)
        return total

    def _free(self, fd: int) -> None:
        """Punch out what was read: the spool's disk use stays at what is unread."""
        if self._punch_error:
            self._truncate_if_read(fd)
            return
        if self.offset - self._punched < BLOCK:
            return
        error = punch(fd, self.offset)
        if error:
            self._punch_error = error
            log.warning("spool.punch_unsupported", path=str(self.path),
                        error=os.strerror(error))  # fmt: skip
            self._truncate_if_read(fd)
            return
        self._punched = self.offset - self.offset % BLOCK

    def _truncate_if_read(self, fd: int) -> None:
        """Where holes cannot be punched: empty a large spool once it is read to its end.
        Bytes the engine appends between the size check and the truncate are lost (the
        copytruncate window, microseconds); O_APPEND puts its next write at the start."""
        if self.offset >= TRUNCATE_AT and os.fstat(fd).st_size == self.offset:
            os.ftruncate(fd, 0)
            self.offset = self._punched = 0

    def _check_disk(self) -> None:
        """A full disk makes the engine's own writes fail, unseen by us: report it."""
        if self._fd is None:
            return
        try:
            full = os.fstatvfs(self._fd).f_bavail == 0
        except OSError:
            return
        if full and not self._full_reported:
            log.error("spool.write_failed", path=str(self.path), error="No space left on device")
        self._full_reported = full
