"""Who may use the gateway: API keys, admin routes, and the Host check on loopback.

Everything here runs before a body is read. With no keys configured the only per-request
cost is ``config.gateway_keys is not None`` (and, on a loopback listener, one cached Host
lookup).
"""

from __future__ import annotations

import functools
import ipaddress
import socket

import psutil
from aiohttp import web

from ..config.gatewaykeys import GatewayKey
from ..config.models import Config
from .upstream import json_response

# Ollama's model-management routes: they download, overwrite or delete models on disk.
ADMIN_PATHS = frozenset({"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete"})
BLOBS_PREFIX = "/api/blobs/"
_HOST_CACHE = 1024  # distinct Host values remembered; an attacker's variety only misses


def presented_key(request: web.BaseRequest) -> str | None:
    """``Authorization: Bearer KEY`` (scheme in any case, as RFC 9110 says) or ``X-API-Key``."""
    auth = request.headers.get("Authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("X-API-Key") or None


def is_admin_path(path: str) -> bool:
    return path in ADMIN_PATHS or path.startswith(BLOBS_PREFIX)


def unauthorized(path: str) -> web.Response:
    """401 in the shape of the API asked (Ollama's ``{"error"}``; OpenAI's error object)."""
    message = "a valid API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
    if path.startswith("/v1/"):
        payload: object = {
            "error": {
                "message": message, "type": "invalid_request_error",
                "param": None, "code": "invalid_api_key",
            }
        }  # fmt: skip
    else:
        payload = {"error": message}
    response = json_response(401, payload)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def admin_refusal(config: Config, client: GatewayKey | None) -> str | None:
    """Why an admin route is refused, or None when it may pass."""
    if config.gateway_keys is None:
        if config.policy.admin_routes == "allow":
            return None
        return (
            "model management routes (/api/pull, /api/push, /api/create, /api/copy, "
            "/api/delete, /api/blobs) are closed on this gateway; the operator can open them "
            "with 'admin_routes: allow' in policy.yaml, or with an admin key (--gateway-keys)"
        )
    if client is not None and client.role == "admin":
        return None
    name = client.name if client else "?"
    return f"this route needs a key with role admin; key {name!r} has role user"


def model_refusal(client: GatewayKey | None, model: str) -> str | None:
    if client is None or client.allows(model):
        return None
    allowed = ", ".join(client.models or ())
    return f"key {client.name!r} may not use model {model!r} (allowed: {allowed})"


def is_loopback_bind(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=_HOST_CACHE)
def host_allowed(host_header: str) -> bool:
    """The Host names Ollama accepts on a loopback listener (DNS-rebinding defence).

    From ollama/ollama server/routes.go ``allowedHostsMiddleware`` and ``allowedHost``:
    the port is split off; an IP passes when it is loopback, private, unspecified or one of
    this machine's own addresses (``isLocalIP``); a name passes when it is empty,
    ``localhost``, this machine's hostname, or ends in ``.localhost``, ``.local`` or
    ``.internal``. Everything else gets 403.
    """
    host = _strip_port(host_header.strip()).lower()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host in ("", "localhost", socket.gethostname().lower()) or host.endswith(
            (".localhost", ".local", ".internal")
        )
    return ip.is_loopback or ip.is_private or ip.is_unspecified or str(ip) in _local_ips()


def _strip_port(host: str) -> str:
    if host.startswith("["):  # [::1]:11434
        end = host.find("]")
        return host[1:end] if end > 0 else host
    if host.count(":") == 1:
        return host.rsplit(":", 1)[0]
    return host  # a bare name, or a bare IPv6 address


def _local_ips() -> frozenset[str]:
    addresses = set()
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                addresses.add(entry.address.split("%", 1)[0])
    return frozenset(addresses)


def host_refused() -> web.Response:
    """Ollama answers a bare 403; a message says why."""
    return json_response(
        403, {"error": "Host header is not a local name; this gateway listens on loopback only"}
    )
