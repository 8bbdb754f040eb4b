"""The one ring with followers, behind a service's output and the daemon's events."""

from __future__ import annotations

import pytest

from llm_supervisor.events import EventRing
from llm_supervisor.process.output import LogLine, OutputRing

pytestmark = pytest.mark.timeout(10)


async def test_output_follow_closed_before_its_first_read_unsubscribes() -> None:
    """`logs -f` whose client leaves before the first line: nothing stays subscribed."""
    ring = OutputRing()
    follow = ring.follow()
    await follow.aclose()
    ring.append(LogLine(1.0, "out", "after the client left"))
    assert ring.subscriber_count() == 0


async def test_both_rings_close_the_same_way() -> None:
    for ring in (OutputRing(), EventRing()):
        follow = ring.follow()
        assert ring.subscriber_count() == 1
        await follow.aclose()
        assert ring.subscriber_count() == 0


async def test_output_follow_gets_new_lines_only_and_a_slow_reader_keeps_the_newest() -> None:
    ring = OutputRing(maxlen=3, follower_queue=2)
    ring.append(LogLine(1.0, "out", "before"))
    follow = ring.follow()
    for i in range(4):
        ring.append(LogLine(2.0 + i, "out", f"line {i}"))
    got = [(await anext(follow)).text, (await anext(follow)).text]
    await follow.aclose()
    assert got == ["line 2", "line 3"]
    assert [ln.text for ln in ring.tail()] == ["line 1", "line 2", "line 3"]
    assert [ln.text for ln in ring.tail(since=4.0)] == ["line 2", "line 3"]
