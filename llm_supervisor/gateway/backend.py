"""What the gateway needs from the supervision core, and how it names an upstream."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..config.models import Config


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

    def note_request(self, service: str) -> None:
        """A request was routed to the service (for idle tracking and LRU eviction)."""
        ...
