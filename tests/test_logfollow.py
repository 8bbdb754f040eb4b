"""Following an engine's log file: lines reach the ring, copytruncate rotation, tail read-back."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from llm_supervisor.process.logfollow import TAIL_BYTES, LogFollower, open_log_for_append
from llm_supervisor.process.output import OutputRing


def texts(ring: OutputRing) -> list[str]:
    return [line.text for line in ring.tail()]


async def wait_for(check: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_appends_reach_the_ring_and_rotation_keeps_every_line(tmp_path: Path) -> None:
    path = tmp_path / "svc.log"
    opened = open_log_for_append(path)
    assert opened is not None
    fd, start = opened  # the engine's end: O_APPEND, as handed over as stdout
    ring = OutputRing(maxlen=100_000)
    follower = LogFollower(path, ring, max_bytes=4096, backups=2)
    follower.start(start)
    written = b""
    try:
        for i in range(200):  # 6 KiB: at least one rotation
            data = f"line {i:04d} {'x' * 20}\n".encode()
            os.write(fd, data)
            written += data
        await wait_for(lambda: "line 0199 " + "x" * 20 in texts(ring))
        await wait_for(lambda: (tmp_path / "svc.log.1").exists() and path.stat().st_size < 4096)
        # O_APPEND: the engine's next write lands at the end of the truncated file.
        os.write(fd, b"after rotation\n")
        written += b"after rotation\n"
        await wait_for(lambda: "after rotation" in texts(ring))
        # Nothing lost, nothing doubled: the backups and the file hold every byte in order.
        kept = b"".join(
            (tmp_path / name).read_bytes()
            for name in ("svc.log.2", "svc.log.1", "svc.log")
            if (tmp_path / name).exists()
        )
        assert kept == written
        assert texts(ring) == written.decode().splitlines()
    finally:
        await follower.stop()
        os.close(fd)


async def test_adoption_reads_back_the_tail_from_a_whole_line(tmp_path: Path) -> None:
    path = tmp_path / "svc.log"
    lines = [f"old line {i:06d}" for i in range(TAIL_BYTES // 10)]
    path.write_text("\n".join(lines) + "\n")
    ring = OutputRing(maxlen=100_000)
    follower = LogFollower(path, ring)
    follower.start(0, tail=True)  # written while no daemon ran: only the last TAIL_BYTES
    try:
        await follower.drain()
        got = texts(ring)
        assert got[-1] == lines[-1]
        assert got[0] in lines  # no cut first line
        assert sum(len(t) + 1 for t in got) <= TAIL_BYTES
    finally:
        await follower.stop()


async def test_an_offset_beyond_the_end_means_the_file_was_truncated(tmp_path: Path) -> None:
    path = tmp_path / "svc.log"
    path.write_text("new run after an outside copytruncate\n")
    ring = OutputRing()
    follower = LogFollower(path, ring)
    follower.start(10_000, tail=True)
    try:
        await follower.drain()
        assert texts(ring) == ["new run after an outside copytruncate"]
    finally:
        await follower.stop()
