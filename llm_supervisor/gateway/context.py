"""What the API modules (ollama_api, openai_api) use of the gateway.

A Protocol, so that they do not import the Gateway (app.py), which imports them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from aiohttp import web

from .backend import GatewayBackend, Rebuild, Upstream
from .stats import GatewayStats
from .upstream import ErrorBody, UpstreamClient


class GatewayContext(Protocol):
    backend: GatewayBackend
    stats: GatewayStats
    client: UpstreamClient
    started_at: int  # Unix time, the "created" of /v1/models entries

    async def read_body(self, request: web.BaseRequest) -> bytes: ...

    def body_stream(self, request: web.BaseRequest) -> AsyncIterator[bytes]: ...

    def queue(self) -> dict[str, Any]:
        """Where a waiting client stands, per model (``/v1/queue``, ``/api/queue``)."""
        ...

    async def route(
        self,
        up: Upstream,
        request: web.BaseRequest,
        body: bytes | AsyncIterator[bytes] | None,
        error_body: ErrorBody,
        *,
        model: str | None = None,
        api: str = "ollama",
        ensure: bool = True,
        rebuild: Rebuild | None = None,
    ) -> web.StreamResponse:
        """Start the service if needed (the request waits, or a fallback serves it), then
        forward and stream back."""
        ...
