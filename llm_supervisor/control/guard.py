"""Who may ask the control API: the bearer token, the page's cookie login, browser refusals.

One aiohttp middleware, used by the control API and by ``llm-supervisor ui``'s proxy:

- **Origin.** A request that carries an ``Origin`` header comes from a web page. Only the
  status page itself may call the API, so any other origin, ``null`` included (sandboxed
  frames, ``file:`` pages, some redirects), gets 403: otherwise any tab in the operator's
  browser could POST ``/v1/services/NAME/stop`` (CSRF). The page's own origin is the one
  whose host:port is the request's ``Host``.
- **Host.** Without a token (the Unix socket, e.g. forwarded with ``ssh -L``) names that are
  not local get 403 (DNS rebinding: the attacker's name resolves to 127.0.0.1).
- **Token.** With a token (TCP), every request needs ``Authorization: Bearer <token>`` or the
  page's cookie. Browsers cannot send a header on a page load, so ``/?token=TOKEN`` answers
  with the cookie (HttpOnly, SameSite=Strict) and a redirect to the bare URL.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

COOKIE = "llm_supervisor_token"
PAGE_PATHS = ("/", "/ui")


def error_response(status: int, kind: str, message: str, **headers: str) -> web.Response:
    """The API's error shape, ``{"error": {"type", "message"}}``."""
    body = {"error": {"type": kind, "message": message}}
    return web.json_response(body, status=status, headers=headers or None)


def _hostname(hostport: str) -> str:
    return (urlsplit(f"//{hostport}").hostname or "").lower()


def _local_name(name: str) -> bool:
    """IP literals and single-label names (localhost, the CLI's "llm-supervisor") are local;
    a rebinding attack needs a DNS name of the attacker's, which has dots."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(name)
        return True
    return "." not in name or name.endswith(".localhost")


def refusal(origin: str | None, host: str, *, token: bool) -> str | None:
    """Why a request with these headers is refused (403), or None."""
    if origin is not None:
        scheme, netloc = urlsplit(origin)[:2]
        if scheme not in ("http", "https") or not host or netloc.lower() != host.lower():
            return (
                f"request from origin {origin!r} refused: only the status page served at "
                f"http://{host or 'this address'}/ may call the control API from a browser"
            )
    if not token and host and not _local_name(_hostname(host)):
        return f"host {host!r} is not a local name; use a token to serve other names"
    return None


def _same(sent: str, expected: str) -> bool:
    return hmac.compare_digest(sent.encode(), expected.encode())


def _authorized(request: web.Request, token: str) -> bool:
    if _same(request.headers.get("Authorization", ""), f"Bearer {token}"):
        return True
    return _same(request.cookies.get(COOKIE, ""), token)


def _login(request: web.Request, token: str) -> web.Response | None:
    """``/?token=TOKEN``: the cookie and a redirect to the URL without the token."""
    sent = request.query.get("token", "")
    if request.path not in PAGE_PATHS or not sent or not _same(sent, token):
        return None
    response = web.Response(status=303, headers={"Location": request.path})
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
    return response


def guard(token: str | None) -> Middleware:
    """The middleware; ``token`` None means no authentication (the Unix socket)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host", "")  # not request.host: that falls back to getfqdn()
        why = refusal(request.headers.get("Origin"), host, token=token is not None)
        if why:
            return error_response(403, "forbidden", why)
        if token is None:
            return await handler(request)
        login = _login(request, token)
        if login is not None:
            return login
        if not _authorized(request, token):
            challenge = {"WWW-Authenticate": 'Bearer realm="llm-supervisor"'}
            return error_response(401, "unauthorized", "missing or wrong bearer token", **challenge)
        return await handler(request)

    return middleware
