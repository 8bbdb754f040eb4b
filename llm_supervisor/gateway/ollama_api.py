"""Ollama's native /api/*: pass-through, with the policy applied on the inference routes."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from ..config.models import Config, Policy
from ..logsetup import get_logger
from .backend import Rebuild, Upstream
from .keepalive import Decision, KeepAliveParseError, focus_allows, resolve_keep_alive
from .routing import ollama_for, ollama_listing, ollama_services
from .upstream import json_response, ollama_error

if TYPE_CHECKING:
    from .app import Gateway

log = get_logger(__name__)

POLICY_PATHS = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"})
MERGED_PATHS = frozenset({"/api/tags", "/api/ps"})


class Refusal(Exception):
    def __init__(self, status: int, payload: dict[str, Any]) -> None:
        self.status = status
        self.payload = payload


async def handle(gw: Gateway, request: web.BaseRequest) -> web.StreamResponse:
    path, config = request.path, gw.backend.config()
    if path == "/api/queue" and request.method == "GET":
        return json_response(200, gw.queue())
    if path.startswith("/api/blobs/"):  # model uploads: stream, never buffer gigabytes
        up = ollama_for(config, None)
        if up is None:
            return json_response(404, {"error": "no Ollama service is configured"})
        return await gw.route(up, request, gw.body_stream(request), ollama_error)
    if path in MERGED_PATHS and len(ollama_services(config)) > 1:
        return await _merged(gw, path)
    body = await gw.read_body(request)
    payload = _json_object(body)
    model = payload.get("model") or payload.get("name") if payload else None
    model = model if isinstance(model, str) else None
    rebuild = None
    if path in POLICY_PATHS and payload is not None and model:
        if model in config.policy.fallbacks:  # the request as sent, before the policy
            rebuild = _rebuilder(gw, request.remote or "?", dict(payload), config)
        try:
            if _apply_policy(gw, request.remote or "?", payload, model, config.policy):
                body = json.dumps(payload).encode()
        except Refusal as refusal:
            return json_response(refusal.status, refusal.payload)
    up = ollama_for(config, model)
    if up is None:
        return json_response(404, {"error": "no Ollama service is configured"})
    inference = path in POLICY_PATHS
    return await gw.route(
        up,
        request,
        body,
        ollama_error,
        model=model if inference else None,
        ensure=model is not None,
        rebuild=rebuild,
    )


def _rebuilder(gw: Gateway, client: str, original: dict[str, Any], config: Config) -> Rebuild:
    """The same request for a fallback model, with the policy applied for that model."""

    def build(alternative: str) -> tuple[Upstream, bytes] | None:
        payload = {**original, "model": alternative}
        try:
            _apply_policy(gw, client, payload, alternative, config.policy)
        except Refusal:
            return None
        up = ollama_listing(config, alternative)
        return (up, json.dumps(payload).encode()) if up is not None else None

    return build


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body) if body else None
    except ValueError:
        return None  # Ollama answers the malformed body itself
    return value if isinstance(value, dict) else None


def _apply_policy(
    gw: Gateway, client: str, payload: dict[str, Any], model: str, policy: Policy
) -> bool:
    """Focus, keep_alive and forced options; True if the payload changed."""
    if not focus_allows(model, policy):
        gw.stats.focus_refusals[model] += 1
        log.info("focus.refused", client=client, model=model, focus=list(policy.focus))
        raise Refusal(403, focus_error(model, policy))
    try:
        decision = resolve_keep_alive(model, payload.get("keep_alive"), policy)
    except KeepAliveParseError as exc:  # refuse exactly as Ollama would (api/types.go)
        gw.stats.bad_keep_alive += 1
        raise Refusal(400, {"error": str(exc)}) from exc
    changed = _record_keep_alive(gw, client, model, decision)
    if changed:
        payload["keep_alive"] = decision.applied
    return _force_options(gw, payload, model, policy) or changed


def focus_error(model: str, policy: Policy) -> dict[str, Any]:
    allowed = ", ".join(policy.focus)
    return {
        "error": f"model {model!r} is not in this server's focus list ({allowed}); "
        "the operator limited which models may be used right now",
        "focus": list(policy.focus),
    }


def _record_keep_alive(gw: Gateway, client: str, model: str, decision: Decision) -> bool:
    fields = {
        "client": client,
        "model": model,
        "asked": decision.asked_text,
        "rule": decision.rule,
        "reason": decision.reason,
    }
    if decision.changed:
        gw.stats.rewrites[(model, decision.rule, "keep_alive")] += 1
        # A client that sent nothing is routine; one whose value was overridden is news.
        emit = log.info if decision.asked is not None else log.debug
        emit("keepalive.rewrite", applied=decision.applied_text, **fields)
        return True
    if "would apply" in decision.reason:
        gw.stats.observed[(model, decision.rule)] += 1
        log.info("keepalive.observe", applied=decision.applied_text, **fields)
    return False


def _force_options(gw: Gateway, payload: dict[str, Any], model: str, policy: Policy) -> bool:
    """Load-time options (num_ctx …) must match the pins', or Ollama reloads the model."""
    if not policy.ollama_options:
        return False
    current = payload.get("options")
    current = current if isinstance(current, dict) else {}
    merged = {**current, **policy.ollama_options}
    if merged == current:
        return False
    payload["options"] = merged
    gw.stats.rewrites[(model, "ollama_options", "options")] += 1
    log.debug("options.rewrite", model=model, forced=dict(policy.ollama_options))
    return True


async def _merged(gw: Gateway, path: str) -> web.Response:
    """/api/tags and /api/ps across several Ollama services (unreachable ones are skipped)."""
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
    return json_response(200, {"models": models})
