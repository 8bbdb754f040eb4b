"""Pins and expiry repair: compare each Ollama service's /api/ps with the policy.

Catches what the request path cannot see: a local process that talks to Ollama directly and
unloads a pinned model (keep_alive 0), or shortens its expiry; and /v1 requests, which carry
no keep_alive at all (Ollama's OpenAI middleware has none), so a model they load gets
OLLAMA_KEEP_ALIVE. Loads use the policy's ollama_options: a different num_ctx would make
Ollama reload the model on the next request (server/sched.go needsReload).

Pins load as soon as their Ollama service becomes ready (a service state listener), and again
on every later ready (after a crash and restart); the periodic loop only repairs.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..config.modelnames import canonical_model_name
from ..config.models import Config, Policy
from ..durations import format_duration, to_ollama_keep_alive
from ..logsetup import get_logger
from ..service.states import State
from .backend import Upstream
from .keepalive import rule_for
from .models_view import PolicyState, parse_expires_at
from .routing import ollama_listing, ollama_services
from .upstream import UpstreamClient

log = get_logger(__name__)

FOREVER_HORIZON = 10 * 365 * 86400.0  # Ollama's forever expires ~292 years out


@dataclass(frozen=True)
class PinAction:
    """Send an empty request for ``model`` with ``keep_alive`` (loads it, or resets its timer)."""

    model: str
    keep_alive: int | str
    rule: str
    reason: str


def reconcile(
    ps_models: Sequence[Mapping[str, Any]],
    policy: Policy,
    now: float,
    *,
    pins: Sequence[str] | None = None,
    last_request: Mapping[str, float] | None = None,
    busy: frozenset[str] = frozenset(),
    slack: float = 30.0,
) -> list[PinAction]:
    """Actions that bring one Ollama service in line with the policy.

    ``pins``: the pinned models this service serves (default: all of policy.pin).
    ``last_request``: when the gateway last sent each model a request (canonical names); a
    finite keep_alive is owed from then, so an earlier expiry means someone shortened it.
    """
    last = last_request or {}
    loaded = {canonical_model_name(str(m.get("name") or m.get("model"))): m for m in ps_models}
    actions = []
    for pin in policy.pin if pins is None else pins:
        if canonical_model_name(pin) not in loaded:
            actions.append(PinAction(pin, -1, "pin", "pinned but not loaded"))
    if policy.keep_alive.mode == "observe":
        return actions
    for model, entry in loaded.items():
        if model in busy:
            continue  # during a request Ollama shows a stale expires_at
        rule, target = rule_for(model, policy)
        reason = _expiry_problem(
            parse_expires_at(entry.get("expires_at")),
            target,
            last.get(model),
            now,
            slack,
            policy.keep_alive.mode,
        )
        if reason:
            actions.append(PinAction(model, to_ollama_keep_alive(target), rule, reason))
    return actions


def _expiry_problem(
    expires: float | None, target: float, last: float | None, now: float, slack: float, mode: str
) -> str | None:
    if expires is None or target <= 0:
        return None
    remaining = expires - now
    if math.isinf(target):
        return None if remaining > FOREVER_HORIZON else "expiry shorter than forever"
    if last is not None and expires < last + target - slack:
        return f"expires before the policy's {format_duration(target)} since the last request"
    if mode == "enforce" and remaining > target + slack:
        return f"expiry longer than the policy's {format_duration(target)}"
    return None


def pins_for(config: Config, up: Upstream) -> list[str]:
    """Pins served by this Ollama service: those it lists; unlisted pins go to the first one."""
    services = ollama_services(config)
    mine = []
    for pin in config.policy.pin:
        owner = ollama_listing(config, pin)
        if owner == up or (owner is None and services and services[0] == up):
            mine.append(pin)
    return mine


class PinReconciler:
    """Runs reconcile() for every Ollama service every ``interval`` seconds and applies it."""

    def __init__(self, state: PolicyState, client: UpstreamClient, interval: float = 15.0):
        self.state = state
        self.client = client
        self.interval = interval
        self._locks: dict[str, asyncio.Lock] = {}  # one reconcile per service at a time
        self._on_ready: dict[str, asyncio.Task[list[PinAction]]] = {}

    def on_state(self, name: str, old: State, new: State, reason: str) -> None:
        """Service listener: an Ollama service that became ready loads its pins right away."""
        svc = self.state.backend.config().services.get(name)
        if new is not State.READY or svc is None or svc.spec.engine != "ollama":
            return
        task = asyncio.get_running_loop().create_task(self._load_at_ready(name))
        self._on_ready[name] = task

    async def wait_loaded(self, name: str) -> None:
        """Until the pin loads that ``name``'s last ready started have ended (ok or not)."""
        task = self._on_ready.get(name)
        if task is not None:
            await asyncio.shield(task)

    async def close(self) -> None:
        tasks = list(self._on_ready.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def reconcile_once(self) -> list[PinAction]:
        config = self.state.backend.config()
        done: list[PinAction] = []
        for up in ollama_services(config):
            done += await self._service(config, up)
        return done

    async def _load_at_ready(self, name: str) -> list[PinAction]:
        config = self.state.backend.config()
        try:
            for up in ollama_services(config):
                if up.service == name:
                    return await self._service(config, up)
        except Exception:  # crash-only: the loop repairs what this missed
            log.exception("keepalive.pins_at_ready_failed", service=name)
        return []

    async def _service(self, config: Config, up: Upstream) -> list[PinAction]:
        # The ready listener and the loop may meet: the second one sees the first's loads.
        async with self._locks.setdefault(up.service, asyncio.Lock()):
            return await self._reconcile_service(config, up)

    async def _reconcile_service(self, config: Config, up: Upstream) -> list[PinAction]:
        try:
            models = (await self.client.get_json(up, "/api/ps")).get("models") or []
        except (aiohttp.ClientError, TimeoutError, ValueError):
            self.state.record_ps(up.service, None)  # not running: nothing to repair yet
            return []
        self.state.record_ps(up.service, models)
        actions = reconcile(
            models,
            config.policy,
            self.state.clock(),
            pins=pins_for(config, up),
            last_request=self.state.model_last_request,
            busy=self.state.busy_models(),
        )
        for action in actions:
            await self._apply(config, up, action)
        return actions

    async def _apply(self, config: Config, up: Upstream, action: PinAction) -> None:
        log.info(
            "keepalive.reconcile",
            service=up.service,
            model=action.model,
            keep_alive=action.keep_alive,
            rule=action.rule,
            reason=action.reason,
        )
        body = {
            "model": action.model,
            "keep_alive": action.keep_alive,
            "options": dict(config.policy.ollama_options),
        }
        timeout = config.services[up.service].spec.health.startup_timeout or 1800.0
        self.state.note_model(action.model)
        try:
            await self._load(up, body, timeout)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "keepalive.reconcile_failed", service=up.service, model=action.model, error=str(exc)
            )

    async def _load(self, up: Upstream, body: dict[str, Any], timeout: float) -> None:
        try:
            await self.client.post_json(up, "/api/generate", {**body, "prompt": ""}, timeout)
        except aiohttp.ClientResponseError as exc:
            if exc.status != 400:
                raise
            # embedding-only models refuse generate; an empty embed loads them (routes.go)
            await self.client.post_json(up, "/api/embed", {**body, "input": []}, timeout)

    async def run(self) -> None:
        while True:
            await self.reconcile_once()
            await asyncio.sleep(self.interval)
