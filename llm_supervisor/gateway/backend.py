"""What the gateway needs from the supervision core, and how it names an upstream."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..config.models import Config


@dataclass(frozen=True)
class Upstream:
    """An engine the gateway forwards to; it listens on 127.0.0.1:port."""

    service: str
    engine: str  # "vllm" | "ollama" | "command"
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# Given a fallback model, the upstream and body a request for it would use (the API handler
# applies its own policy and routing to a copy of the request); None when that model may not
# be used (focus, the client's key).
Rebuild = Callable[[str], tuple[Upstream, bytes] | None]


class GatewayBackend(Protocol):
    """Implemented by the Manager. The gateway never reads service state to decide a start."""

    def config(self) -> Config:
        """The current config; swapped on reload, so callers ask again each time."""
        ...

    async def ensure_ready(self, service: str) -> None:
        """Start an on-demand or stopped service and wait until ready (StartFailedError)."""
        ...

    async def stop_idle(self, service: str) -> None:
        """Stop a service because nobody used it for its keep_alive."""
        ...

    def eta(self, service: str) -> float | None:
        """Seconds until the service is ready (0 when it is; None when nothing can say)."""
        ...

    def states(self) -> dict[str, str]:
        """Each service's state by name, for the queue a waiting client may ask about."""
        ...

    def note_request(self, service: str) -> None:
        """A request was routed to the service (for idle tracking and LRU eviction)."""
        ...
