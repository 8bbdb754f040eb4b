"""Per-GPU start gate: one engine load per GPU at a time.

Two vLLM loads on one GPU at once break its memory accounting (each measures free memory
while the other is still allocating), so starts on a GPU are serialized from admission until
the engine is ready or has failed. GPU admission (enough free memory) plugs in here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from ..config.models import ServiceConfig

Admit = Callable[[ServiceConfig], Awaitable[None]]


class StartGate:
    def __init__(self, admit: Admit | None = None) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self.admit = admit

    def _lock(self, gpu: str) -> asyncio.Lock:
        return self._locks.setdefault(gpu, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def starting(self, service: ServiceConfig) -> AsyncIterator[None]:
        # Sorted acquisition: two tensor-parallel services on [0, 1] and [1, 0] cannot deadlock.
        gpus = sorted({str(g) for g in service.gpus})
        async with contextlib.AsyncExitStack() as stack:
            for gpu in gpus:
                await stack.enter_async_context(self._lock(gpu))
            if self.admit is not None:
                await self.admit(service)
            yield
