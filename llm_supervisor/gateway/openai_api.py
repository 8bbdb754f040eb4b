"""OpenAI-compatible /v1/*: route by the body's ``model`` across every service."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..config.gatewaykeys import GatewayKey
from ..config.models import Config
from ..logsetup import get_logger
from .auth import model_refusal
from .backend import Rebuild, Upstream
from .context import GatewayContext
from .gojson import BodyError, decode_object
from .keepalive import focus_allows
from .routing import openai_model_list, openai_route
from .upstream import json_response, openai_error

log = get_logger(__name__)


def error(message: str, kind: str, code: str, param: str | None = "model") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def not_found(model: str) -> dict[str, Any]:
    return error(
        f"The model '{model}' does not exist or is not served by this gateway.",
        "invalid_request_error",
        "model_not_found",
    )


MODEL_FIELD = {"model": "model"}  # Ollama's /v1 decodes into Go structs; vLLM reads "model"


async def handle(
    gw: GatewayContext, request: web.BaseRequest, client: GatewayKey | None = None
) -> web.StreamResponse:
    path, config = request.path, gw.backend.config()
    if request.method == "GET" and path.rstrip("/") == "/v1/queue":
        return json_response(200, gw.queue())
    if request.method == "GET" and path.rstrip("/") == "/v1/models":
        return json_response(200, _visible(openai_model_list(config, gw.started_at), client))
    if request.method == "GET" and path.startswith("/v1/models/"):
        name = path[len("/v1/models/") :]
        listed = [
            m
            for m in _visible(openai_model_list(config, gw.started_at), client)["data"]
            if m["id"] == name
        ]
        return json_response(200 if listed else 404, listed[0] if listed else not_found(name))
    body = await gw.read_body(request)
    try:
        decoded = decode_object(body, MODEL_FIELD)
    except BodyError as exc:
        gw.stats.refusals["body"] += 1
        return json_response(400, error(str(exc), "invalid_request_error", "invalid_body", None))
    model = decoded.payload.get("model") if decoded else None
    if not isinstance(model, str) or not model or decoded is None:
        message = "The request body must be JSON with a 'model' field."
        return json_response(400, error(message, "invalid_request_error", "missing_model"))
    if (refused := model_refusal(client, model)) is not None:
        gw.stats.refusals["model"] += 1
        log.info("gateway.model_refused", client=request.remote, key=client and client.name)
        return json_response(403, error(refused, "invalid_request_error", "model_not_allowed"))
    if not focus_allows(model, config.policy):
        gw.stats.focus_refusals[gw.stats.label(model)] += 1
        log.info("focus.refused", model=model, focus=list(config.policy.focus))
        allowed = ", ".join(config.policy.focus)
        message = f"The model '{model}' is not in this server's focus list ({allowed})."
        return json_response(403, error(message, "invalid_request_error", "model_not_in_focus"))
    up = openai_route(config, model)
    if up is None:
        return json_response(404, not_found(model))
    original = dict(decoded.payload)  # before the served-name rewrite: fallbacks start here
    if up.served is not None and model != up.served:  # vLLM compares names exactly
        decoded.payload["model"] = up.served
    if (up.served is not None and model != up.served) or not decoded.canonical:
        body = json.dumps(decoded.payload).encode()  # the engine reads what we read
    rebuild = None
    if model and config.policy.fallbacks_for(model):
        rebuild = _rebuilder(original, config, client)
    return await gw.route(
        up, request, body, openai_error, model=model, api="openai", rebuild=rebuild
    )


def _rebuilder(payload: dict[str, Any], config: Config, client: GatewayKey | None) -> Rebuild:
    """The same request for a fallback model: focus and the key's allow-list apply to it,
    routing finds it."""

    def build(alternative: str) -> tuple[Upstream, bytes] | None:
        up = openai_route(config, alternative)
        if up is None or not focus_allows(alternative, config.policy):
            return None
        if model_refusal(client, alternative) is not None:
            return None
        name = up.served or alternative  # vLLM compares names exactly
        return up, json.dumps({**payload, "model": name}).encode()

    return build


def _visible(listing: dict[str, Any], client: GatewayKey | None) -> dict[str, Any]:
    """/v1/models as the key sees it: only the models its allow-list admits."""
    if client is None or client.models is None:
        return listing
    return {**listing, "data": [m for m in listing["data"] if client.allows(m["id"])]}
