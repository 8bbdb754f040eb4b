"""What the gateway needs from the supervision core, and how it names an upstream."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from ..config.models import Config
from ..service.usage import Usage


@dataclass(frozen=True)
class Upstream:
    """An engine the gateway forwards to; it listens on 127.0.0.1:port."""

    service: str
    engine: str  # "vllm" | "ollama" | "command"
    port: int
    served: str | None = None  # vLLM/command: the exact model name the engine answers to
    api_key: str | None = field(default=None, repr=False)  # the engine's own key, sent upstream

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# Given a fallback model, the upstream and body a request for it would use (the API handler
# applies its own policy and routing to a copy of the request); None when that model may not
# be used (focus, the client's key).
Rebuild = Callable[[str], tuple[Upstream, bytes] | None]


class GatewayBackend(Protocol):
    """Implemented by the daemon (DaemonBackend). The gateway asks for outcomes; the services
    decide (a start, an idle stop) themselves."""

    def config(self) -> Config:
        """The current config; swapped on reload, so callers ask again each time."""
        ...

    def lease(self, service: str) -> AbstractContextManager[object]:
        """Held around each request: the service is in use (no idle stop, no eviction)."""
        ...

    async def ensure_ready(self, service: str) -> None:
        """Start an on-demand or stopped service and wait until ready (StartFailedError)."""
        ...

    async def stop_if_idle(self, service: str, idle_for: float) -> bool:
        """Stop the service if nobody used it for ``idle_for`` seconds; True if it stopped."""
        ...

    def eta(self, service: str) -> float | None:
        """Seconds until the service is ready (0 when it is; None when nothing can say)."""
        ...

    def states(self) -> dict[str, str]:
        """Each service's state by name, for the queue a waiting client may ask about."""
        ...

    def usage(self, service: str) -> Usage | None:
        """Requests holding the service and its last use; None for an unknown service."""
        ...
