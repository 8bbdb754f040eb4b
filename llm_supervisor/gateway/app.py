"""The gateway's ASGI app and its server.

A plain ASGI callable rather than Starlette routing: the hot path is "read a small JSON
body, maybe rewrite it, stream the answer back", and every layer costs at 64 clients
(see upstream.py for the measurement that chose aiohttp).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Generator

import uvicorn
from starlette.types import Receive, Scope, Send

from ..errors import StartFailedError
from ..logsetup import get_logger
from . import ollama_api, openai_api
from .backend import GatewayBackend, Upstream
from .idle import IdleWatcher
from .models_view import Clock, PolicyState
from .pins import PinReconciler
from .routing import ollama_for
from .stats import GatewayStats
from .upstream import ErrorBody, UpstreamClient, UpstreamUnavailable, ollama_error, send_json

log = get_logger(__name__)


class ClientGone(Exception):
    """The client disconnected while we were reading its request."""


class Gateway:
    """The ASGI app plus its background loops. ``state.policy_status()`` feeds status."""

    def __init__(
        self,
        backend: GatewayBackend,
        *,
        clock: Clock = time.time,
        stats: GatewayStats | None = None,
        pin_interval: float = 15.0,
        idle_interval: float = 10.0,
    ) -> None:
        self.backend = backend
        self.stats = stats or GatewayStats()
        self.state = PolicyState(backend, self.stats, clock)
        self.client = UpstreamClient()
        self.pins = PinReconciler(self.state, self.client, pin_interval)
        self.idle = IdleWatcher(self.state, idle_interval)
        self.started_at = int(clock())
        self.port: int | None = None  # the bound port once serving (useful with port 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        try:
            if path.startswith("/api/"):
                await ollama_api.handle(self, scope, receive, send)
            elif path.startswith("/v1/"):
                await openai_api.handle(self, scope, receive, send)
            elif path == "/" and (up := ollama_for(self.backend.config(), None)):
                await self.route(up, scope, receive, send, b"", ollama_error, ensure=False)
            else:
                await send_json(send, 404, {"error": f"no route for {path}"})
        except ClientGone:
            return

    async def read_body(self, receive: Receive) -> bytes:
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)

    async def body_stream(self, receive: Receive) -> AsyncIterator[bytes]:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            yield message.get("body", b"")
            if not message.get("more_body"):
                return

    async def route(
        self,
        up: Upstream,
        scope: Scope,
        receive: Receive,
        send: Send,
        body: bytes | AsyncIterator[bytes] | None,
        error_body: ErrorBody,
        *,
        model: str | None = None,
        api: str = "ollama",
        ensure: bool = True,
    ) -> None:
        """Start the service if needed (the request waits), then forward and stream back."""
        if ensure:
            try:
                await self.backend.ensure_ready(up.service)
            except StartFailedError as exc:
                log.warning("gateway.start_failed", service=up.service, error=str(exc))
                await send_json(send, 503, error_body(503, f"{exc} {exc.hint}".strip()))
                return
        self.backend.note_request(up.service)
        self.stats.requests[(up.service, api)] += 1
        self.state.request_started(up.service, model)
        try:
            completed = await self.client.forward(up, scope, receive, send, body, error_body)
        except UpstreamUnavailable as exc:
            self.stats.upstream_errors[up.service] += 1
            log.warning("gateway.upstream_unavailable", service=up.service, error=str(exc))
            await send_json(send, 502, error_body(502, str(exc)))
            return
        finally:
            self.state.request_ended(up.service, model)
        if not completed:
            self.stats.disconnects[up.service] += 1
            log.info("gateway.client_disconnect", service=up.service, model=model)

    async def run_loops(self) -> None:
        """The pin reconciler and the idle watcher; runs until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.pins.run())
            group.create_task(self.idle.run())

    async def serve(
        self, host: str, port: int, ready_event: asyncio.Event | None = None, loops: bool = True
    ) -> None:
        """Serve until cancelled; then finish gracefully (open streams get 5 s)."""
        config = uvicorn.Config(
            self,
            host=host,
            port=port,
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
            server_header=False,
        )
        server = _Server(config, self, ready_event)
        loop_task = asyncio.create_task(self.run_loops()) if loops else None
        serving = asyncio.create_task(server.serve())
        try:
            await asyncio.shield(serving)
        except asyncio.CancelledError:
            server.should_exit = True
            await serving
            raise
        finally:
            if loop_task is not None:
                loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop_task
            await self.client.close()


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the daemon owns SIGTERM/SIGINT/SIGHUP."""

    def __init__(
        self, config: uvicorn.Config, gateway: Gateway, ready: asyncio.Event | None
    ) -> None:
        super().__init__(config)
        self._gateway = gateway
        self._ready = ready

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.servers and self.servers[0].sockets:
            self._gateway.port = self.servers[0].sockets[0].getsockname()[1]
        if self._ready is not None and self.started:
            self._ready.set()


async def serve_gateway(
    backend: GatewayBackend,
    host: str,
    port: int,
    *,
    ready_event: asyncio.Event | None = None,
    gateway: Gateway | None = None,
) -> None:
    """Run the gateway (server + pin and idle loops) until cancelled."""
    await (gateway or Gateway(backend)).serve(host, port, ready_event)
