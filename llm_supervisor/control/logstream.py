"""The ``logs?follow=1`` response: NDJSON lines, ending cleanly when the client leaves.

A quiet service may write nothing for hours, so a vanished client is not noticed by a failed
write: the server runs with ``handler_cancellation``, so aiohttp cancels the handler when the
connection drops, and the ``finally`` closes the backend's iterator. The server's own
shutdown event ends the stream from the other side.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from aiohttp import web

from .backend import LogLine

NDJSON = "application/x-ndjson"


def encode_line(line: LogLine) -> bytes:
    return (json.dumps(line.to_json(), ensure_ascii=False) + "\n").encode()


async def close_iterator(follow: AsyncIterator[Any]) -> None:
    aclose = getattr(follow, "aclose", None)
    if aclose is not None:
        await aclose()


async def race(*aws: Awaitable[Any]) -> None:
    """Run until the first finishes; cancel the rest; re-raise the winner's error."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


async def follow_response(
    request: web.Request,
    head: list[LogLine],
    follow: AsyncIterator[LogLine],
    closing: asyncio.Event,
) -> web.StreamResponse:
    """Writes ``head`` (the tail), then every new line from ``follow`` until told to stop."""
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    try:
        await response.prepare(request)
        if head:
            await response.write(b"".join(encode_line(line) for line in head))
        await race(_pump(response, head, follow), closing.wait())
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away mid-write; nothing to tell it
    finally:
        await close_iterator(follow)
    return response


async def _pump(
    response: web.StreamResponse, head: list[LogLine], follow: AsyncIterator[LogLine]
) -> None:
    seen = set(head)
    newest = head[-1].ts if head else float("-inf")
    async for line in follow:
        # the follower subscribed before the tail was taken: skip lines already sent
        if line.ts <= newest and line in seen:
            continue
        await response.write(encode_line(line))
