"""``llm-supervisor ui [--port 8765]``: the status page in a browser, through the control socket.

Browsers cannot open a Unix socket, so this serves 127.0.0.1:PORT and forwards every request
to the control API (socket or TCP, found like every other command). Other local users could
reach that port too, which the socket's mode 0660 would not allow them; so the proxy makes a
one-time token and prints ``http://127.0.0.1:PORT/?token=…``: opening it sets a cookie
(``control/guard.py``), and every request without it is refused.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..control.address import (
    add_control_arguments,
    default_control_address,
    parse_address,
    read_token,
)

if TYPE_CHECKING:
    from aiohttp import ClientSession, web

# Not forwarded: our own credentials, and what only concerns the browser ↔ proxy hop.
_DROP_REQUEST = {"host", "cookie", "authorization", "origin", "referer", "connection"}
_DROP_RESPONSE = {"content-length", "transfer-encoding", "connection", "keep-alive"}
CONNECT_TIMEOUT_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8765, help="local port (0: any free one)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    add_control_arguments(parser)


def upstream_session(address: str, token: str | None) -> ClientSession:
    """A client for the control API; event streams stay open, so only connecting times out."""
    import aiohttp

    host, where = parse_address(address)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
    if host == "unix":
        connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=str(where))
        base = "http://llm-supervisor"
    else:
        connector = aiohttp.TCPConnector()
        base = f"http://[{host}]:{where}" if ":" in host else f"http://{host}:{where}"
    return aiohttp.ClientSession(
        base, connector=connector, headers=headers, timeout=timeout, auto_decompress=False
    )


def proxy_app(address: str, upstream_token: str | None, token: str) -> web.Application:
    """Forward everything to the control API; guarded by ``token`` (cookie after login)."""
    import aiohttp
    from aiohttp import web
    from multidict import CIMultiDict

    from ..control.client import unreachable
    from ..control.guard import guard

    upstream_key = web.AppKey("upstream", aiohttp.ClientSession)

    async def session(app: web.Application) -> AsyncIterator[None]:
        app[upstream_key] = upstream_session(address, upstream_token)
        yield
        await app[upstream_key].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        body = await request.read()
        upstream = request.app[upstream_key]
        try:
            answer = await upstream.request(
                request.method, request.rel_url, headers=headers, data=body or None
            )
        except aiohttp.ClientConnectionError as exc:
            message = str(unreachable(address, exc))
            body_json = {"error": {"type": "unreachable", "message": message}}
            return web.json_response(body_json, status=502)
        async with answer:  # released (closed, if unfinished) when the browser leaves
            kept = CIMultiDict(
                (k, v) for k, v in answer.headers.items() if k.lower() not in _DROP_RESPONSE
            )
            response = web.StreamResponse(status=answer.status, headers=kept)
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        return response

    app = web.Application(middlewares=[guard(token)])
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{path:.*}", forward)
    return app


def run(args: argparse.Namespace) -> int:
    import secrets

    from aiohttp import web

    from ..control.server import bind_tcp
    from ..logsetup import configure_logging

    configure_logging("auto", "error")

    address = default_control_address(args.control, client=True)
    env_token = os.environ.get("LLM_SUPERVISOR_TOKEN_FILE")
    token_file = args.token_file or (Path(env_token) if env_token else None)
    upstream_token = read_token(token_file)
    token = secrets.token_urlsafe(24)
    sock = bind_tcp(args.host, args.port)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"status page for {address}:\n  http://{host}:{port}/?token={token}", flush=True)
    print("(the link works once per browser; stop with Ctrl-C)", file=sys.stderr, flush=True)
    # run_app: its own loop, SIGINT/SIGTERM end it gracefully; the browser's hang-ups
    # cancel their forwarders (event streams would otherwise hold the upstream open).
    web.run_app(
        proxy_app(address, upstream_token, token), sock=sock, print=None, access_log=None,
        handler_cancellation=True, shutdown_timeout=1.0,
    )  # fmt: skip
    return 0
