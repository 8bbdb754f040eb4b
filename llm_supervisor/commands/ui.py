"""``llm-supervisor ui [--port 8765]``: the status page in a browser, through the control socket.

Browsers cannot open a Unix socket, so this serves 127.0.0.1:PORT and forwards every request
to the control API (socket or TCP, found like every other command). Other local users could
reach that port too, which the socket's mode 0660 would not allow them; so the proxy makes a
one-time token and prints ``http://127.0.0.1:PORT/?token=…``: opening it sets a cookie
(``control/page.py``'s ``BrowserGuard``), and every request without it is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from ..control.address import default_control_address, parse_address, read_token
from ..control.client import add_control_arguments, unreachable

# Not forwarded: our own credentials, and what only concerns the browser ↔ proxy hop.
_DROP_REQUEST = {"host", "cookie", "authorization", "origin", "referer", "connection"}
_DROP_RESPONSE = {"content-length", "transfer-encoding", "connection", "keep-alive"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8765, help="local port (0: any free one)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    add_control_arguments(parser)


def upstream_client(address: str, token: str | None) -> httpx.AsyncClient:
    host, where = parse_address(address)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = httpx.Timeout(None, connect=5.0)  # event streams stay open
    if host == "unix":
        transport = httpx.AsyncHTTPTransport(uds=str(where))
        return httpx.AsyncClient(
            transport=transport, base_url="http://llm-supervisor", headers=headers, timeout=timeout
        )
    base = f"http://[{host}]:{where}" if ":" in host else f"http://{host}:{where}"
    return httpx.AsyncClient(base_url=base, headers=headers, timeout=timeout)


def proxy_app(upstream: httpx.AsyncClient, address: str, token: str) -> ASGIApp:
    """Forward everything to the control API; guarded by ``token`` (cookie after login)."""
    from ..control.api import BearerAuth
    from ..control.page import BrowserGuard

    async def forward(request: Request) -> Response:
        headers = [(k, v) for k, v in request.headers.items() if k not in _DROP_REQUEST]
        outgoing = upstream.build_request(
            request.method, request.url.path, params=request.url.query.encode(),
            headers=headers, content=await request.body(),
        )  # fmt: skip
        try:
            answer = await upstream.send(outgoing, stream=True)
        except httpx.TransportError as exc:
            body = {"error": {"type": "unreachable", "message": str(unreachable(address, exc))}}
            return JSONResponse(body, status_code=502)
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _DROP_RESPONSE}
        return StreamingResponse(
            answer.aiter_raw(), answer.status_code, kept, background=BackgroundTask(answer.aclose)
        )

    methods = ["GET", "POST"]
    app = Starlette(routes=[Route("/{path:path}", forward, methods=methods)])
    return BrowserGuard(BearerAuth(app, token), token)


async def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..control.server import bind_tcp

    address = default_control_address(args.control, client=True)
    env_token = os.environ.get("LLM_SUPERVISOR_TOKEN_FILE")
    token_file = args.token_file or (Path(env_token) if env_token else None)
    upstream = upstream_client(address, read_token(token_file))
    token = secrets.token_urlsafe(24)
    sock = bind_tcp(args.host, args.port)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"status page for {address}:\n  http://{host}:{port}/?token={token}", flush=True)
    print("(the link works once per browser; stop with Ctrl-C)", file=sys.stderr, flush=True)
    config = uvicorn.Config(
        proxy_app(upstream, address, token), log_level="warning", lifespan="off",
        timeout_graceful_shutdown=1,
    )  # fmt: skip
    try:
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        await upstream.aclose()
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(serve(args))
