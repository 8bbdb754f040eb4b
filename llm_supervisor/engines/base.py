"""What every engine adapter provides, and the parts they share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ..config.models import ArgValue, Policy, ServiceConfig
from .probe import ProbeError
from .probe import Prober as Prober


def flags(args: Mapping[str, ArgValue]) -> list[str]:
    """``{max-model-len: 8192, enforce-eager: true}`` → ``--max-model-len 8192 --enforce-eager``."""
    argv: list[str] = []
    for key, value in args.items():
        flag = key if key.startswith("-") else f"--{key}"
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, *(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


# Probes use a minimal HTTP/1.1 client (probe.py), not aiohttp: at 64 services probed every
# second, aiohttp's request machinery was most of the idle daemon's CPU.
def make_prober() -> Prober:
    """One per daemon: it keeps one idle connection per engine."""
    return Prober()


async def http_ok(client: Prober, url: str, timeout: float) -> bytes | None:
    """The body if the server answered 2xx in time; None for anything else."""
    try:
        status, body = await client.get(url, timeout)
    except (TimeoutError, ProbeError, OSError, ValueError):  # ValueError: a malformed URL
        return None
    return body if 200 <= status < 300 else None


class Engine(Protocol):
    kind: str
    stop_timeout: float
    startup_timeout: float

    def argv(self, svc: ServiceConfig) -> list[str]: ...

    def env(self, svc: ServiceConfig, policy: Policy) -> dict[str, str]: ...

    async def ready(self, client: Prober, svc: ServiceConfig, timeout: float) -> bool:
        """The model answers: not merely that a process or a port exists."""
        ...

    async def live(self, client: Prober, svc: ServiceConfig, timeout: float) -> bool: ...


def base_url(svc: ServiceConfig) -> str:
    return f"http://127.0.0.1:{svc.spec.port}"
