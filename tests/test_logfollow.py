"""Draining an engine's spool: lines reach the ring and the log file, what was read is punched
out, and a follower after a crash resumes where the holes end."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from llm_supervisor.process import logfollow
from llm_supervisor.process.logfollow import BLOCK, LogFollower, open_spool, read_tail
from llm_supervisor.process.output import OutputRing, RotatingFile


def texts(ring: OutputRing) -> list[str]:
    return [line.text for line in ring.tail()]


async def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


def lines(start: int, stop: int) -> bytes:
    return b"".join(f"line {i:05d} {'x' * 40}\n".encode() for i in range(start, stop))


async def test_spool_reaches_ring_and_log_file_and_read_bytes_are_freed(tmp_path: Path) -> None:
    spool = tmp_path / "spool" / "svc.out"
    opened = open_spool(spool)
    assert opened is not None
    fd, start = opened  # the engine's end: O_APPEND, as handed over as stdout
    ring, sink = OutputRing(maxlen=100_000), RotatingFile(tmp_path / "svc.log")
    sink.secrets, ring.secrets = (b"sk-secret",), ("sk-secret",)
    follower = LogFollower(spool, ring, sink)
    follower.start(start)
    try:
        os.write(fd, lines(0, 2000) + b"key=sk-secret\n")  # ~100 KiB
        await wait_for(lambda: "key=***" in texts(ring))
        assert (tmp_path / "svc.log").read_bytes() == lines(0, 2000) + b"key=***\n"
        # Punched out: the size is kept (the engine's offset), the blocks are gone.
        size = spool.stat().st_size
        assert size == len(lines(0, 2000)) + len(b"key=sk-secret\n")
        assert spool.stat().st_blocks * 512 <= 2 * BLOCK
        os.write(fd, b"after the holes\n")
        await wait_for(lambda: "after the holes" in texts(ring))
        assert oct(spool.stat().st_mode & 0o777) == "0o600"
    finally:
        assert await follower.stop() == spool.stat().st_size
        os.close(fd)


async def test_a_follower_after_a_crash_starts_where_the_holes_end(tmp_path: Path) -> None:
    spool = tmp_path / "svc.out"
    opened = open_spool(spool)
    assert opened is not None
    fd, _ = opened
    first_ring = OutputRing(maxlen=100_000)
    first = LogFollower(spool, first_ring, None)
    first.start(0)
    os.write(fd, lines(0, 1000))
    await wait_for(lambda: len(texts(first_ring)) == 1000)
    await first.stop()  # the daemon dies; its last record said offset 0
    os.write(fd, lines(1000, 1100))  # written while no daemon ran
    ring = OutputRing(maxlen=100_000)
    second = LogFollower(spool, ring, None)
    second.start(0)
    try:
        await second.drain()
        got = texts(ring)
        assert got[-100:] == lines(1000, 1100).decode().splitlines()
        assert len(got) - 100 <= BLOCK // len(lines(0, 1)) + 1, "at most one block twice"
    finally:
        await second.stop()
        os.close(fd)


def test_read_tail_gives_whole_lines_from_the_end(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_bytes(lines(0, 3000))  # ~140 KiB
    ring = OutputRing(maxlen=100_000)
    read_tail(log, ring, max_bytes=10_000)
    got = texts(ring)
    assert got[-1] == lines(2999, 3000).decode().strip()
    assert all(text in lines(0, 3000).decode() for text in got)
    assert got[0].startswith("line ") and len(got) == 10_000 // len(lines(0, 1))


async def test_without_hole_punching_a_read_spool_is_truncated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logfollow, "punch", lambda fd, length: errno.EOPNOTSUPP)
    monkeypatch.setattr(logfollow, "TRUNCATE_AT", 10_000)
    spool = tmp_path / "svc.out"
    opened = open_spool(spool)
    assert opened is not None
    fd, _ = opened
    ring = OutputRing(maxlen=100_000)
    follower = LogFollower(spool, ring, None)
    follower.start(0)
    try:
        os.write(fd, lines(0, 400))  # ~20 KB
        await wait_for(lambda: len(texts(ring)) == 400)
        await wait_for(lambda: spool.stat().st_size == 0)
        os.write(fd, b"next\n")  # O_APPEND: at the start of the emptied file
        await wait_for(lambda: texts(ring)[-1] == "next")
        assert spool.read_bytes() == b"next\n"
    finally:
        await follower.stop()
        os.close(fd)
