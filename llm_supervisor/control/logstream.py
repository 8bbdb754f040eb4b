"""The ``logs?follow=1`` response: NDJSON lines, ending cleanly when the client leaves.

A plain StreamingResponse only notices a vanished client when the next write fails, and a
quiet service may write nothing for hours; so the pump races the ASGI ``http.disconnect``
message and the server's own shutdown event, and closes the backend's iterator either way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .backend import LogLine

NDJSON = "application/x-ndjson"


def encode_line(line: LogLine) -> bytes:
    return (json.dumps(line.to_json(), ensure_ascii=False) + "\n").encode()


class FollowResponse(Response):
    """Writes ``head`` (the tail), then every new line from ``follow`` until told to stop."""

    def __init__(
        self, head: list[LogLine], follow: AsyncIterator[LogLine], closing: asyncio.Event
    ) -> None:
        # not super().__init__: that sets a body, hence "content-length: 0"
        self.status_code = 200
        self.media_type = NDJSON
        self.background = None
        self.init_headers()
        self._head = head
        self._follow = follow
        self._closing = closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await self._body(send, b"".join(encode_line(line) for line in self._head))
            await self._race(self._pump(send), _wait_disconnect(receive), self._closing.wait())
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write; nothing to tell it
        finally:
            aclose = getattr(self._follow, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _pump(self, send: Send) -> None:
        seen = set(self._head)
        newest = self._head[-1].ts if self._head else float("-inf")
        async for line in self._follow:
            # the follower subscribed before the tail was taken: skip lines already sent
            if line.ts <= newest and line in seen:
                continue
            await self._body(send, encode_line(line))

    @staticmethod
    async def _body(send: Send, data: bytes) -> None:
        if data:
            await send({"type": "http.response.body", "body": data, "more_body": True})

    @staticmethod
    async def _race(*aws: Awaitable[Any]) -> None:
        """Run until the first finishes; cancel the rest; re-raise the winner's error."""
        tasks = [asyncio.ensure_future(aw) for aw in aws]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
