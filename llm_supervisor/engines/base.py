"""What every engine adapter provides, and the parts they share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import httpx

from ..config.models import ArgValue, Policy, ServiceConfig


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


async def http_ok(client: httpx.AsyncClient, url: str, timeout: float) -> httpx.Response | None:
    """The response if the server answered 2xx in time; None for anything else."""
    try:
        response = await client.get(url, timeout=timeout)
    except (httpx.HTTPError, OSError):
        return None
    return response if response.is_success else None


class Engine(Protocol):
    kind: str
    stop_timeout: float
    startup_timeout: float

    def argv(self, svc: ServiceConfig) -> list[str]: ...

    def env(self, svc: ServiceConfig, policy: Policy) -> dict[str, str]: ...

    async def ready(self, client: httpx.AsyncClient, svc: ServiceConfig, timeout: float) -> bool:
        """The model answers: not merely that a process or a port exists."""
        ...

    async def live(self, client: httpx.AsyncClient, svc: ServiceConfig, timeout: float) -> bool: ...


def base_url(svc: ServiceConfig) -> str:
    return f"http://127.0.0.1:{svc.spec.port}"
