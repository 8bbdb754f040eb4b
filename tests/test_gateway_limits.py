"""Gateway limits in-process: bodies under the cap pass, over it are refused before any
"100 Continue" invites them; connection cap and header timeout (aiohttp has neither)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from llm_supervisor.gateway.limits import GatewayLimits, default_max_connections

from .test_gateway import RigFactory, rig_factory  # noqa: F401 (the fixture)

pytestmark = pytest.mark.timeout(30)


async def exchange(port: int, head: bytes, body: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body)
    await writer.drain()
    answer = await reader.read(65536)
    writer.close()
    return answer


async def test_a_body_under_the_cap_is_served(rig_factory: RigFactory) -> None:  # noqa: F811
    rig = await rig_factory()
    rig.gw.limits = dataclasses.replace(rig.gw.limits, max_body=2 << 20)
    text = "x" * (1 << 20)  # an image-sized message, under the cap
    reply = await rig.openai().chat.completions.create(
        model="qwen3-8b", messages=[{"role": "user", "content": text}]
    )
    assert reply.choices


async def test_over_the_cap_no_100_continue_only_413(rig_factory: RigFactory) -> None:  # noqa: F811
    rig = await rig_factory()
    rig.gw.limits = dataclasses.replace(rig.gw.limits, max_body=1000)
    assert rig.gw.port is not None
    answer = await exchange(
        rig.gw.port,
        b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
        b"Content-Length: 1001\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"100 Continue" not in answer
    assert b'{"error": "request body larger than' in answer


async def test_chunked_body_over_the_cap_is_413_in_openai_shape(
    rig_factory: RigFactory,  # noqa: F811
) -> None:
    rig = await rig_factory()
    rig.gw.limits = dataclasses.replace(rig.gw.limits, max_body=1000)
    assert rig.gw.port is not None
    chunk = b"600\r\n" + b"x" * 0x600 + b"\r\n"
    answer = await exchange(
        rig.gw.port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        chunk,
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b'"type": "invalid_request_error"' in answer and b'"code": 413' in answer


@pytest.mark.parametrize(("nofile", "share"), [(1024, 384), (400, 72), (65536, 32640), (100, 1)])
def test_the_connection_share_leaves_256_descriptors(nofile: int, share: int) -> None:
    assert default_max_connections(nofile) == share


def test_documented_defaults() -> None:
    limits = GatewayLimits()
    assert (limits.max_body, limits.header_timeout, limits.keepalive_timeout) == (
        100 << 20, 30.0, 75.0,
    )  # fmt: skip
    assert limits.body_timeout == 60.0
