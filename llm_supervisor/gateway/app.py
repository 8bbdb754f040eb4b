"""The gateway's HTTP server: aiohttp's low-level server with one handler, no router.

The hot path is "read a small JSON body, maybe rewrite it, stream the answer back", and every
layer costs at 64 clients (see upstream.py for the measurement that chose aiohttp).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..errors import StartFailedError
from ..logsetup import get_logger
from ..service.crashonly import crash_only
from . import ollama_api, openai_api
from .auth import host_allowed, host_refused, is_loopback_bind, presented_key, unauthorized
from .backend import GatewayBackend, Rebuild, Upstream
from .idle import IdleWatcher
from .limits import (
    BodyTimeout,
    BodyTooLarge,
    GatewayLimits,
    LimitedServer,
    iter_body,
    read_capped,
)
from .models_view import Clock, PolicyState
from .pins import PinReconciler
from .queue import WaitingRoom, queue_document, retry_after
from .routing import ollama_for, routes_for
from .stats import GatewayStats
from .upstream import (
    FIRST_BYTE_AT,
    ErrorBody,
    UpstreamBroke,
    UpstreamClient,
    UpstreamUnavailable,
    json_response,
    ollama_error,
    openai_error,
)

log = get_logger(__name__)

FALLBACK_HEADER = "X-LLM-Supervisor-Fallback"

GRACEFUL_SHUTDOWN = 5.0  # open streams get this long to finish when the gateway stops
ACCEPTED_GRACE = 0.1  # seconds for just-accepted connections to send their request
BACKLOG = 1024  # create_server calls listen() again: keep room for clients during an upgrade


class Gateway:
    """The HTTP handler plus its background loops. ``state.policy_status()`` feeds status."""

    def __init__(
        self,
        backend: GatewayBackend,
        *,
        clock: Clock = time.time,
        stats: GatewayStats | None = None,
        pin_interval: float = 15.0,
        idle_interval: float = 10.0,
        limits: GatewayLimits | None = None,
    ) -> None:
        self.backend = backend
        self.limits = limits or GatewayLimits()
        self.task_errors: Counter[str] = Counter()  # exceptions its loops survived
        self.stats = stats or GatewayStats()
        self.stats.known = lambda: routes_for(backend.config()).known_models
        self.state = PolicyState(backend, self.stats, clock)
        self.client = UpstreamClient()
        self.pins = PinReconciler(self.state, self.client, pin_interval)
        self.idle = IdleWatcher(backend, idle_interval)
        self.waiting = WaitingRoom()
        self.started_at = int(clock())
        self.port: int | None = None  # the bound port once serving (useful with port 0)
        self.loopback = True  # bound to loopback: the Host header is checked as Ollama does

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except (BodyTooLarge, BodyTimeout) as exc:
            status = 413 if isinstance(exc, BodyTooLarge) else 408
            log.warning("gateway.body_refused", path=request.path, status=status, error=str(exc))
            error_body = openai_error if request.path.startswith("/v1/") else ollama_error
            response = json_response(status, error_body(status, str(exc)))
            # The rest of the body is not read into memory: aiohttp discards it for at most
            # its lingering_time (10 s) so the client sees this answer, then closes.
            response.force_close()
            return response

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        # Before the body is read (and before 100-continue invites it): who is asking.
        # The Host header itself: aiohttp's request.host falls back to a DNS lookup.
        if self.loopback and not host_allowed(request.headers.get("Host", "")):
            self.stats.refusals["host"] += 1
            return host_refused()
        client = None
        if (keys := self.backend.config().gateway_keys) is not None:
            presented = presented_key(request)
            client = keys.lookup(presented)
            if client is None:
                self.stats.refusals["no_key" if presented is None else "bad_key"] += 1
                log.info("gateway.unauthorized", client=request.remote, path=request.path)
                return unauthorized(request.path)
            self.stats.key_requests[client.name] += 1
        declared = request.content_length
        if declared is not None and declared > self.limits.max_body and _buffered(request):
            raise BodyTooLarge(self.limits.max_body)  # before "100 Continue" invites it
        if request.version >= (1, 1) and _expects_continue(request):
            # aiohttp's router would answer this; the low-level server leaves it to us. The
            # client waits for it before sending the body (curl: 1 s, then sends anyway).
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the response proper has not started
        path = request.path
        if path.startswith("/api/"):
            return await ollama_api.handle(self, request, client)
        if path.startswith("/v1/"):
            return await openai_api.handle(self, request, client)
        if path == "/" and (up := ollama_for(self.backend.config(), None)):
            return await self.route(up, request, b"", ollama_error, ensure=False)
        return json_response(404, {"error": f"no route for {path}"})

    async def read_body(self, request: web.BaseRequest) -> bytes:
        """A body the gateway parses (to route or rewrite it): at most ``max_body``."""
        return await read_capped(request, self.limits)

    def body_stream(self, request: web.BaseRequest) -> AsyncIterator[bytes]:
        """A body passed through to the engine unread (model uploads): any size, since
        only one chunk at a time is held; a client that stops sending is cut."""
        return iter_body(request, self.limits)

    async def route(
        self,
        up: Upstream,
        request: web.BaseRequest,
        body: bytes | AsyncIterator[bytes] | None,
        error_body: ErrorBody,
        *,
        model: str | None = None,
        api: str = "ollama",
        ensure: bool = True,
        rebuild: Rebuild | None = None,
    ) -> web.StreamResponse:
        """Start the service if needed (the request waits), then forward and stream back.

        With ``rebuild`` and a ``fallbacks`` entry for the model, a service that cannot
        serve (fatal, not admitted, or still loading after ``fallback_after``) hands the
        request to the first fallback that is ready or can start.
        """
        started = time.perf_counter()  # latency as clients feel it: a start included
        alternatives = self._fallbacks(model) if ensure and rebuild is not None else ()
        # The lease first: from now on the service is in use, so an idle stop or an eviction
        # that has not decided yet leaves it running (and one that has is waited out).
        with self.backend.lease(up.service):
            refusal = await self._wait_ready(up, error_body, bool(alternatives)) if ensure else None
            if refusal is None:
                return await self._forward(
                    up, request, body, error_body, started, model=model, api=api
                )
        served = await self._fall_back(request, model, api, rebuild, alternatives, started)
        if served is not None:
            return served
        if isinstance(refusal, web.Response):
            return refusal
        with self.backend.lease(up.service):  # still loading, and no fallback could serve
            refusal = await self._wait_ready(up, error_body, False)
            if isinstance(refusal, web.Response):
                return refusal
            return await self._forward(up, request, body, error_body, started, model=model, api=api)

    def _fallbacks(self, model: str | None) -> tuple[str, ...]:
        return self.backend.config().policy.fallbacks_for(model) if model else ()

    async def _wait_ready(
        self, up: Upstream, error_body: ErrorBody, may_fall_back: bool
    ) -> web.Response | _StillLoading | None:
        """None once the service is ready; else the answer for a client that cannot wait, or
        STILL_LOADING when a fallback may serve it (``fallback_after`` passed)."""
        policy = self.backend.config().policy
        service = up.service
        if self.waiting.is_full(service, policy.queue.max_waiting):
            eta = self.backend.eta(service)
            message = (
                f"{self.waiting.counts[service]} requests already wait for service {service} to "
                f"start (policy queue.max_waiting); ready in about {_about(eta)}"
            )
            log.warning("gateway.queue_full", service=service, waiting=self.waiting.counts[service])
            return _with_retry(json_response(503, error_body(503, message)), eta, 5)
        patience = policy.fallback_after if may_fall_back else None
        patience_over = asyncio.timeout(patience) if patience is not None else None
        try:
            with self.waiting.hold(service):
                if patience_over is None:  # the common case: no timer to arm and disarm
                    await self.backend.ensure_ready(service)
                else:
                    async with patience_over:
                        await self.backend.ensure_ready(service)
        except StartFailedError as exc:
            log.warning("gateway.start_failed", service=service, error=str(exc))
            return json_response(503, error_body(503, f"{exc} {exc.hint}".strip()))
        except TimeoutError:
            if patience_over is not None and patience_over.expired():  # not startup_timeout
                return STILL_LOADING
            message = f"service {service} did not become ready within its startup_timeout"
            log.warning("gateway.start_timeout", service=service)
            eta = self.backend.eta(service)
            return _with_retry(json_response(504, error_body(504, message)), eta, 10)
        return None

    async def _fall_back(
        self,
        request: web.BaseRequest,
        model: str | None,
        api: str,
        rebuild: Rebuild | None,
        alternatives: tuple[str, ...],
        started: float,
    ) -> web.StreamResponse | None:
        """Serve the request with the first alternative that is ready or can start."""
        if model is None or rebuild is None:
            return None
        for alternative in alternatives:
            built = rebuild(alternative)
            if built is None:
                continue  # focus (or the client's key) does not allow that model
            up, body = built
            with self.backend.lease(up.service):  # the fallback's service is in use too
                try:
                    await self.backend.ensure_ready(up.service)
                except (StartFailedError, TimeoutError):
                    continue
                self.stats.fallbacks[(model, alternative)] += 1
                log.info("gateway.fallback", model=model, fallback=alternative, service=up.service)
                header = (FALLBACK_HEADER, f"{model} -> {alternative}")
                return await self._forward(
                    up, request, body, _error_body(api), started,
                    model=alternative, api=api, headers=[header],
                )  # fmt: skip
        return None

    async def _forward(
        self,
        up: Upstream,
        request: web.BaseRequest,
        body: bytes | AsyncIterator[bytes] | None,
        error_body: ErrorBody,
        started: float,
        *,
        model: str | None,
        api: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> web.StreamResponse:
        self.stats.requests[(up.service, api)] += 1
        if model:
            self.state.request_started(model)
        # With gateway keys, the client's key is the gateway's business: never the engine's.
        keyed = self.backend.config().gateway_keys is not None
        try:
            response = await self.client.forward(up, request, body, headers, strip_auth=keyed)
            first_byte = response.get(FIRST_BYTE_AT)
            self.stats.observe(
                up.service,
                request.path,
                time.perf_counter() - started,
                None if first_byte is None else first_byte - started,
            )
            return response
        except UpstreamUnavailable as exc:
            self.stats.upstream_errors[up.service] += 1
            log.warning("gateway.upstream_unavailable", service=up.service, error=str(exc))
            return json_response(502, error_body(502, str(exc)))
        except UpstreamBroke as exc:
            self.stats.upstream_errors[up.service] += 1
            log.warning("gateway.upstream_broke", service=up.service, model=model, error=str(exc))
            if request.transport is not None:
                request.transport.close()  # the client must see a cut stream, not an end
            return exc.response
        except asyncio.CancelledError:
            if request.transport is None:  # the client hung up; aiohttp cancelled us
                self.stats.disconnects[up.service] += 1
                log.info("gateway.client_disconnect", service=up.service, model=model)
            raise
        finally:
            if model:
                self.state.request_ended(model)

    def queue(self) -> dict[str, Any]:
        """``GET /v1/queue`` and ``/api/queue``: where a waiting client stands, per model."""
        return queue_document(self.backend.config(), self.queue_facts(), self.started_at)

    def queue_facts(self) -> dict[str, dict[str, Any]]:
        """Per service: state, requests waiting for its start and in flight, the ETA."""
        facts = {}
        for service, state in self.backend.states().items():
            waiting = self.waiting.counts.get(service, 0)
            usage = self.backend.usage(service)
            # The Service counts every request that holds it, waiting ones included.
            in_use = usage.in_flight if usage is not None else 0
            facts[service] = {
                "state": state,
                "waiting": waiting,
                "in_flight": max(0, in_use - waiting),
                "eta_s": None if state == "ready" else self.backend.eta(service),
            }
        return facts

    async def run_loops(self) -> None:
        """The pin reconciler and the idle watcher; runs until cancelled."""
        # Crash-only: a bug in one loop is logged and counted, and the loop starts again.
        async with asyncio.TaskGroup() as group:
            group.create_task(crash_only("gateway.pins", self.pins.run, self.task_errors))
            group.create_task(crash_only("gateway.idle", self.idle.run, self.task_errors))

    async def serve(
        self,
        host: str,
        port: int,
        ready_event: asyncio.Event | None = None,
        loops: bool = True,
        sock: socket.socket | None = None,
    ) -> None:
        """Serve until cancelled; then finish gracefully (open streams get 5 s).

        With ``sock`` (bound by the daemon) the server accepts on a duplicate: stopping it
        stops accepting but leaves the socket listening, for an upgrade in place.
        """
        # handler_cancellation: a client that hangs up cancels its handler, and with it the
        # engine request (the rule "client gone → upstream cancelled").
        self.loopback = is_loopback_bind(host)
        if not self.loopback and self.backend.config().gateway_keys is None:
            log.warning(
                "gateway.open_without_keys", address=f"{host}:{port}",
                hint="anyone who can reach this address can use every model; "
                "see --gateway-keys in the README's Security section",
            )  # fmt: skip
        # handler_cancellation: a client that hangs up cancels its handler, and with it the
        # engine request (the rule "client gone → upstream cancelled").
        limits = self.limits
        server = LimitedServer(
            self.handle, handler_cancellation=True, access_log=None,
            max_connections=limits.max_connections, header_timeout=limits.header_timeout,
            # aiohttp's own knobs: closes a connection idle this long (its default: 3630 s);
            # request line and header fields stay at aiohttp's 8190-byte limits
            # (max_line_size, max_field_size), which answer 400 above them.
            keepalive_timeout=limits.keepalive_timeout,
        )  # fmt: skip
        runner = web.ServerRunner(server, shutdown_timeout=GRACEFUL_SHUTDOWN)
        await runner.setup()
        loop_task = asyncio.create_task(self.run_loops()) if loops else None
        try:
            if sock is not None:
                await web.SockSite(runner, sock.dup(), backlog=BACKLOG).start()
            else:
                await web.TCPSite(runner, host, port).start()
            self.port = runner.addresses[0][1]
            if ready_event is not None:
                ready_event.set()
            await asyncio.Event().wait()  # until cancelled
        finally:
            # Ordered: stop accepting and let open requests finish (bounded), then stop the
            # loops that may still talk to engines, then close the engine connections.
            for site in list(runner.sites):
                await site.stop()
            # A client accepted a moment ago may not have sent its request yet; aiohttp
            # would close its connection as idle (a failed request during an upgrade).
            await asyncio.sleep(ACCEPTED_GRACE)
            await runner.cleanup()
            if loop_task is not None:
                loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop_task
            await self.pins.close()
            await self.client.close()


def _buffered(request: web.BaseRequest) -> bool:
    """Bodies the gateway reads whole; model uploads (/api/blobs) are streamed instead."""
    return not request.path.startswith("/api/blobs/")


class _StillLoading:
    """Not an answer for the client: fallback_after passed while the load goes on."""


STILL_LOADING = _StillLoading()


def _with_retry(response: web.Response, eta: float | None, default: int) -> web.Response:
    response.headers["Retry-After"] = retry_after(eta, default)
    return response


def _about(eta: float | None) -> str:
    return "an unknown time" if eta is None else f"{eta:.0f} s"


def _error_body(api: str) -> ErrorBody:
    return openai_error if api == "openai" else ollama_error


def _expects_continue(request: web.BaseRequest) -> bool:
    return request.headers.get("Expect", "").lower() == "100-continue"
