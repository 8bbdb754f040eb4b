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
    try:
        for i in range(200):  # ~3 KiB per batch of 100: rotation after the second
            os.write(fd, f"line {i:04d} {'x' * 20}\n".encode())
            if i % 100 == 99:
                await wait_for(lambda i=i: f"line {i:04d}" in " ".join(texts(ring)[-1:]))
        os.write(fd, b"a" * 2000 + b"\n")
        await wait_for(lambda: (tmp_path / "svc.log.1").exists())
        # O_APPEND: the engine's next write lands at the start of the truncated file.
        os.write(fd, b"after rotation\n")
        await wait_for(lambda: "after rotation" in texts(ring))
        assert path.read_bytes() == b"after rotation\n"
        rotated = (tmp_path / "svc.log.1").read_bytes()
        assert rotated.startswith(b"line 0000") and rotated.endswith(b"a" * 2000 + b"\n")
        assert [t for t in texts(ring) if t.startswith("line")] == [
            f"line {i:04d} {'x' * 20}" for i in range(200)
        ]
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
