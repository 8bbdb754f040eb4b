"""What every engine adapter provides, and the parts they share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import aiohttp

from ..config.models import ArgValue, Policy, ServiceConfig, ServiceSpec

API_KEY_ENV = "VLLM_API_KEY"  # vLLM reads its key from here when --api-key is not given


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


# Probes use aiohttp, not httpx: measured here, one keep-alive GET cost 0.6 ms of CPU with
# aiohttp and 1.6 ms with httpx in the idle daemon. A hand-written HTTP/1.1 probe client was
# tried too: it cut the idle daemon at 64 services with 1 s probes from ~1.35 % to ~0.8 % of
# a core, but both are under the 2 % target, and the library parses HTTP so we don't.
Prober = aiohttp.ClientSession


def make_prober() -> Prober:
    # No connection limit: every service keeps its own keep-alive connection.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


def engine_api_key(spec: ServiceSpec) -> str | None:
    """The key an engine was started with (``args: {api-key: …}`` or env VLLM_API_KEY):
    probes and the gateway must present it, since clients present the gateway's own key."""
    for name in ("api-key", "--api-key"):
        value = spec.args.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    env = spec.env.get(API_KEY_ENV)
    return str(env) if spec.engine == "vllm" and env is not None else None


def auth_headers(spec: ServiceSpec) -> dict[str, str] | None:
    key = engine_api_key(spec)
    return {"Authorization": f"Bearer {key}"} if key else None


async def http_ok(
    client: Prober, url: str, timeout: float, headers: dict[str, str] | None = None
) -> bytes | None:
    """The body if the server answered 2xx in time; None for anything else."""
    try:
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with client.get(url, timeout=client_timeout, headers=headers) as response:
            if not 200 <= response.status < 300:
                return None
            return await response.read()
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None


async def http_post_ok(
    client: Prober,
    url: str,
    payload: object,
    timeout: float,
    headers: dict[str, str] | None = None,
) -> bool:
    """True if the server answered the POST with 2xx in time (the body is read and dropped)."""
    try:
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        post = client.post(url, json=payload, timeout=client_timeout, headers=headers)
        async with post as response:
            await response.read()
            return 200 <= response.status < 300
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False


WARMUP_PROMPT = "Hello"


async def openai_warmup(client: Prober, svc: ServiceConfig, timeout: float) -> bool | None:
    """One one-token completion by the served name; None when the service asks for none."""
    if not svc.spec.warmup or not svc.spec.public_name:
        return None
    payload = {"model": svc.spec.public_name, "prompt": WARMUP_PROMPT, "max_tokens": 1}
    url, headers = f"{base_url(svc)}/v1/completions", auth_headers(svc.spec)
    return await http_post_ok(client, url, payload, timeout, headers)


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

    async def warmup(
        self, client: Prober, svc: ServiceConfig, policy: Policy, timeout: float
    ) -> bool | None:
        """One short request after ready; True/False: it answered or not; None: not asked."""
        ...


def base_url(svc: ServiceConfig) -> str:
    return f"http://127.0.0.1:{svc.spec.port}"
