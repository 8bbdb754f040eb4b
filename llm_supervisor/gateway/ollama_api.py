"""Ollama's native /api/*: pass-through, with the policy applied on the inference routes."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import web

from ..config.gatewaykeys import GatewayKey
from ..config.models import Config, Policy
from ..logsetup import get_logger
from .auth import admin_refusal, is_admin_path, model_refusal
from .backend import Rebuild, Upstream
from .context import GatewayContext
from .gojson import BodyError, Decoded, decode_object
from .keepalive import (
    Decision,
    KeepAliveParseError,
    focus_allows,
    parse_ollama_keep_alive,
    resolve_keep_alive,
)
from .routing import ollama_for, ollama_listing, ollama_services
from .upstream import json_response, ollama_error

log = get_logger(__name__)

POLICY_PATHS = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"})
MERGED_PATHS = frozenset({"/api/tags", "/api/ps"})
# Go field names (folded as gojson.fold does) → JSON names, of the request structs in
# ollama/ollama api/types.go: GenerateRequest, ChatRequest, EmbedRequest, EmbeddingRequest
# carry Model, KeepAlive and Options; the management requests carry Model and the
# deprecated Name (server/routes.go uses cmp.Or(req.Model, req.Name)).
POLICY_FIELDS = {"model": "model", "keep_alive": "keep_alive", "options": "options"}
NAME_FIELDS = {"model": "model", "name": "name"}


class Refusal(Exception):
    def __init__(self, status: int, payload: dict[str, Any]) -> None:
        self.status = status
        self.payload = payload


async def handle(
    gw: GatewayContext, request: web.BaseRequest, client: GatewayKey | None = None
) -> web.StreamResponse:
    path, config = request.path, gw.backend.config()
    if path == "/api/queue" and request.method == "GET":
        return json_response(200, gw.queue())
    if is_admin_path(path) and (refused := admin_refusal(config, client)) is not None:
        gw.stats.refusals["admin"] += 1
        key = client.name if client else None
        log.info("gateway.admin_refused", client=request.remote, key=key, path=path)
        return json_response(403, {"error": refused})
    if path.startswith("/api/blobs/"):  # model uploads: stream, never buffer gigabytes
        up = ollama_for(config, None)
        if up is None:
            return json_response(404, {"error": "no Ollama service is configured"})
        return await gw.route(up, request, gw.body_stream(request), ollama_error)
    restricted = client is not None and client.models is not None
    if path in MERGED_PATHS and (restricted or len(ollama_services(config)) > 1):
        return await _merged(gw, path, client)  # a key sees only the models it may use
    body = await gw.read_body(request)
    inference = path in POLICY_PATHS
    try:
        decoded = decode_object(body, POLICY_FIELDS if inference else NAME_FIELDS)
    except BodyError as exc:
        gw.stats.refusals["body"] += 1
        return json_response(400, {"error": str(exc)})
    payload = decoded.payload if decoded else None
    model = _model_of(payload, inference)
    if model and (refused := model_refusal(client, model)) is not None:
        gw.stats.refusals["model"] += 1
        log.info("gateway.model_refused", client=request.remote, key=client and client.name)
        return json_response(403, {"error": refused})
    rebuild = None
    if inference and decoded is not None and model:
        if config.policy.fallbacks_for(model):  # the request as sent, before the policy
            rebuild = _rebuilder(gw, request.remote or "?", dict(decoded.payload), config, client)
        try:
            if _apply_policy(gw, request.remote or "?", decoded, model, config.policy):
                body = json.dumps(decoded.payload).encode()
        except Refusal as refusal:
            return json_response(refusal.status, refusal.payload)
    elif inference and decoded is not None and not decoded.canonical:
        body = json.dumps(decoded.payload).encode()  # Ollama must read what we read
    up = ollama_for(config, model)
    if up is None:
        return json_response(404, {"error": "no Ollama service is configured"})
    return await gw.route(
        up,
        request,
        body,
        ollama_error,
        model=model if inference else None,
        ensure=model is not None,
        rebuild=rebuild,
    )


def _model_of(payload: dict[str, Any] | None, inference: bool) -> str | None:
    if payload is None:
        return None
    model = payload.get("model") if inference else payload.get("model") or payload.get("name")
    return model if isinstance(model, str) and model else None


def _rebuilder(
    gw: GatewayContext,
    remote: str,
    original: dict[str, Any],
    config: Config,
    client: GatewayKey | None,
) -> Rebuild:
    """The same request for a fallback model, with the policy (and the key's allow-list)
    applied for that model."""

    def build(alternative: str) -> tuple[Upstream, bytes] | None:
        if model_refusal(client, alternative) is not None:
            return None
        decoded = Decoded({**original, "model": alternative}, True, {})
        try:
            _apply_policy(gw, remote, decoded, alternative, config.policy)
        except Refusal:
            return None
        up = ollama_listing(config, alternative)
        return (up, json.dumps(decoded.payload).encode()) if up is not None else None

    return build


def _apply_policy(
    gw: GatewayContext, client: str, decoded: Decoded, model: str, policy: Policy
) -> bool:
    """Focus, keep_alive and forced options; True if the body must be written anew."""
    payload = decoded.payload
    if not focus_allows(model, policy):
        gw.stats.focus_refusals[gw.stats.label(model)] += 1
        log.info("focus.refused", client=client, model=model, focus=list(policy.focus))
        raise Refusal(403, focus_error(model, policy))
    try:
        for earlier in decoded.occurrences.get("keep_alive", [])[:-1]:
            parse_ollama_keep_alive(earlier)  # Go fails on any bad occurrence, not just the last
        decision = resolve_keep_alive(model, payload.get("keep_alive"), policy)
    except KeepAliveParseError as exc:  # refuse exactly as Ollama would (api/types.go)
        gw.stats.bad_keep_alive += 1
        raise Refusal(400, {"error": str(exc)}) from exc
    changed = _record_keep_alive(gw, client, model, decision)
    if changed:
        payload["keep_alive"] = decision.applied
    return _force_options(gw, payload, model, policy) or changed or not decoded.canonical


def focus_error(model: str, policy: Policy) -> dict[str, Any]:
    allowed = ", ".join(policy.focus)
    return {
        "error": f"model {model!r} is not in this server's focus list ({allowed}); "
        "the operator limited which models may be used right now",
        "focus": list(policy.focus),
    }


def _record_keep_alive(gw: GatewayContext, client: str, model: str, decision: Decision) -> bool:
    fields = {
        "client": client,
        "model": model,
        "asked": decision.asked_text,
        "rule": decision.rule,
        "reason": decision.reason,
    }
    if decision.changed:
        gw.stats.rewrites[(gw.stats.label(model), decision.rule, "keep_alive")] += 1
        # A client that sent nothing is routine; one whose value was overridden is news.
        emit = log.info if decision.asked is not None else log.debug
        emit("keepalive.rewrite", applied=decision.applied_text, **fields)
        return True
    if "would apply" in decision.reason:
        gw.stats.observed[(gw.stats.label(model), decision.rule)] += 1
        log.info("keepalive.observe", applied=decision.applied_text, **fields)
    return False


def _force_options(gw: GatewayContext, payload: dict[str, Any], model: str, policy: Policy) -> bool:
    """Load-time options (num_ctx …) must match the pins', or Ollama reloads the model."""
    if not policy.ollama_options:
        return False
    current = payload.get("options")
    current = current if isinstance(current, dict) else {}
    merged = {**current, **policy.ollama_options}
    if merged == current:
        return False
    payload["options"] = merged
    gw.stats.rewrites[(gw.stats.label(model), "ollama_options", "options")] += 1
    log.debug("options.rewrite", model=model, forced=dict(policy.ollama_options))
    return True


async def _merged(gw: GatewayContext, path: str, client: GatewayKey | None = None) -> web.Response:
    """/api/tags and /api/ps across several Ollama services (unreachable ones are skipped),
    limited to the models the client's key may use."""
    models: list[Any] = []
    reached = 0
    for up in ollama_services(gw.backend.config()):
        try:
            models += (await gw.client.get_json(up, path)).get("models") or []
            reached += 1
        except (aiohttp.ClientError, TimeoutError, ValueError):
            continue
    if not reached:
        return json_response(502, {"error": "no Ollama service is reachable"})
    if client is not None:
        models = [m for m in models if isinstance(m, dict) and client.allows(_row_name(m))]
    return json_response(200, {"models": models})


def _row_name(row: dict[str, Any]) -> str:
    return str(row.get("name") or row.get("model") or "")
