"""OpenAI-compatible /v1/*: route by the body's ``model`` across every service."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..config.models import Config
from ..logsetup import get_logger
from .backend import Rebuild, Upstream
from .keepalive import focus_allows
from .routing import openai_model_list, openai_route
from .upstream import json_response, openai_error

if TYPE_CHECKING:
    from .app import Gateway

log = get_logger(__name__)


def error(message: str, kind: str, code: str, param: str | None = "model") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def not_found(model: str) -> dict[str, Any]:
    return error(
        f"The model '{model}' does not exist or is not served by this gateway.",
        "invalid_request_error",
        "model_not_found",
    )


async def handle(gw: Gateway, request: web.BaseRequest) -> web.StreamResponse:
    path, config = request.path, gw.backend.config()
    if request.method == "GET" and path.rstrip("/") == "/v1/queue":
        return json_response(200, gw.queue())
    if request.method == "GET" and path.rstrip("/") == "/v1/models":
        return json_response(200, openai_model_list(config, gw.started_at))
    if request.method == "GET" and path.startswith("/v1/models/"):
        name = path[len("/v1/models/") :]
        listed = [m for m in openai_model_list(config, gw.started_at)["data"] if m["id"] == name]
        return json_response(200 if listed else 404, listed[0] if listed else not_found(name))
    body = await gw.read_body(request)
    payload = _json_object(body)
    model = _model_of(payload)
    if model is None:
        message = "The request body must be JSON with a 'model' field."
        return json_response(400, error(message, "invalid_request_error", "missing_model"))
    if not focus_allows(model, config.policy):
        gw.stats.focus_refusals[model] += 1
        log.info("focus.refused", model=model, focus=list(config.policy.focus))
        allowed = ", ".join(config.policy.focus)
        message = f"The model '{model}' is not in this server's focus list ({allowed})."
        return json_response(403, error(message, "invalid_request_error", "model_not_in_focus"))
    up = openai_route(config, model)
    if up is None:
        return json_response(404, not_found(model))
    rebuild = None
    if payload is not None and model in config.policy.fallbacks:
        rebuild = _rebuilder(payload, config)
    return await gw.route(
        up, request, body, openai_error, model=model, api="openai", rebuild=rebuild
    )


def _rebuilder(payload: dict[str, Any], config: Config) -> Rebuild:
    """The same request for a fallback model: focus applies to it, routing finds it."""

    def build(alternative: str) -> tuple[Upstream, bytes] | None:
        up = openai_route(config, alternative)
        if up is None or not focus_allows(alternative, config.policy):
            return None
        return up, json.dumps({**payload, "model": alternative}).encode()

    return build


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _model_of(payload: dict[str, Any] | None) -> str | None:
    model = payload.get("model") if payload is not None else None
    return model if isinstance(model, str) and model else None
