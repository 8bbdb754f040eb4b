"""What a Service needs from the daemon, injected so tests can replace each piece.

The hooks get the parts they read (a service's config, its name), never the Service itself.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

from ..config.models import Policy, ServiceConfig
from ..engines.base import Prober
from ..process.registry import GroupRegistry
from .starts import StartHistory
from .states import State


@contextlib.asynccontextmanager
async def no_gate(_: ServiceConfig) -> AsyncIterator[None]:
    yield


# (service name, old state, new state, reason), called on every transition.
StateListener = Callable[[str, State, State, str], object]


@dataclass(frozen=True)
class GpuHooks:
    """What a service asks of GPU placement (gpu/placement.py implements both)."""

    # CUDA_VISIBLE_DEVICES for the engine, None when the service has no GPU
    cuda_devices: Callable[[ServiceConfig], str | None] = lambda svc: None
    # Awaited after a tree is gone, before the next start (GPU memory really released).
    wait_released: Callable[[ServiceConfig, list[int]], Awaitable[None]] | None = None


@dataclass
class ServiceDeps:
    http: Prober
    registry: GroupRegistry
    log_dir: Path | None
    policy: Callable[[], Policy] = Policy
    # Held from admission until ready or failure: one start per GPU at a time.
    start_gate: Callable[[ServiceConfig], AbstractAsyncContextManager[None]] = no_gate
    # Awaited after a tree is gone, before the next start (GPU memory really released).
    wait_released: Callable[[ServiceConfig, list[int]], Awaitable[None]] | None = None
    cuda_devices: Callable[[ServiceConfig], str | None] = lambda svc: None
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    rand: Callable[[], float] = random.random
    listeners: list[StateListener] = field(default_factory=list)
    ready_poll_interval: float = 0.1
    # Last start durations (the ETA shown to waiting clients); None keeps them in memory.
    start_history: StartHistory = field(default_factory=lambda: StartHistory(None))
