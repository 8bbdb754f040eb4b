"""A fake Ollama server that follows Ollama's scheduling semantics (no real model behind it).

Run: ``python tests/fakes/fake_ollama.py --port N [--load-seconds S]``; or import
``FakeOllama`` and serve ``FakeOllama(...).app`` in-process (tests inject ``ManualClock``
so keep_alive timers run on virtual time). Sources, in ollama/ollama:
- api/types.go ``Duration.UnmarshalJSON``: number = seconds, negative = forever; string =
  Go ``time.ParseDuration`` (a bare "5" fails: 400); ``time.Duration(t*1e9)`` overflows for
  huge numbers (negative on amd64 → unload like 0).
- server/sched.go: ``load`` takes the request's keep_alive or OLLAMA_KEEP_ALIVE (5m);
  ``useLoadedRunner`` overwrites the runner's sessionDuration only if the request carries
  one (the last one sticks); when refCount drops to 0 a duration <= 0 unloads at once, else
  a timer starts and expiresAt = now + duration; ``needsReload``: changed runner options
  (num_ctx, num_batch, num_gpu ...) reload the model.
- server/routes.go: empty prompt/messages + keep_alive 0 = unload ("done_reason":"unload");
  empty prompt = load ("load"); allowedHostsMiddleware 403s a non-local Host on a loopback
  listener; PsHandler lists expires_at and size_vram; an empty /api/embed input loads.
- openai/openai.go: the /v1 routes map no keep_alive and no num_ctx.
- Request bodies are decoded as Go's encoding/json decodes them (see ``go_decode``): keys
  match struct fields case-insensitively, the last duplicate wins, trailing data is ignored.
- server/routes.go DeleteHandler / PullHandler: ``cmp.Or(req.Model, req.Name)``; delete of
  an unknown model is 404.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import ipaddress
import json
import math
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

GO_MAX_SECONDS = (2**63 - 1) / 1e9  # time.Duration(math.MaxInt64): "forever"
RUNNER_KEYS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")
_GO_DURATION = re.compile(r"[+-]?((\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h))+")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


class BadKeepAlive(ValueError):
    pass


def parse_keep_alive(value: Any) -> float | None:
    """Seconds; None = absent; inf = forever; negative = overflowed (behaves like 0)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadKeepAlive(f"Unsupported type: '{type(value).__name__}'")
    if not isinstance(value, str):
        if value < 0:
            return math.inf
        return -1.0 if value * 1e9 >= 2**63 else float(value)
    if value.lstrip("+-") == "0":
        return 0.0
    if not _GO_DURATION.fullmatch(value):
        if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)", value):
            raise BadKeepAlive(f'time: missing unit in duration "{value}"')
        raise BadKeepAlive(f'time: invalid duration "{value}"')
    parts = re.findall(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)", value)
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    return math.inf if value.startswith("-") else seconds


# JSON names of the request structs' fields (api/types.go: GenerateRequest, ChatRequest,
# EmbedRequest, EmbeddingRequest, PullRequest, DeleteRequest).
GO_FIELDS = ("model", "name", "prompt", "messages", "input", "stream", "keep_alive", "options",
             "format", "raw", "system", "images", "think", "insecure", "truncate",
             "max_tokens")  # fmt: skip
_MAPS, _POINTERS = ("options",), ("keep_alive", "stream", "think", "truncate")


class _Obj(dict[str, Any]):
    pairs: list[tuple[str, Any]]


def _obj(pairs: list[tuple[str, Any]]) -> _Obj:
    obj = _Obj(pairs)
    obj.pairs = pairs
    return obj


def _go_fold(name: str) -> str:
    """fold.go foldName: ASCII to upper case, any other rune to the smallest rune of its
    unicode.SimpleFold orbit (U+212A KELVIN SIGN → K, U+017F LONG S → S)."""
    out = []
    for ch in name:
        if ch.isascii():
            out.append(ch.upper())
            continue
        lower = ch.lower()
        orbit = [c for c in (ch, ch.upper(), lower, lower.upper(), ch.casefold()) if len(c) == 1]
        out.append(min(orbit))
    return "".join(out)


def go_decode(raw: bytes) -> dict[str, Any]:
    """``json.NewDecoder(body).Decode(&req)`` as gin's ShouldBindJSON runs it (decode.go).

    One value is read and whatever follows is ignored. Each key picks the field with that
    exact name, else the one equal under foldName; occurrences are decoded in order, so the
    last duplicate wins; ``null`` leaves a string as it was and sets a pointer or map to
    nil; an object decoded into an existing map adds its keys. Unknown keys are dropped.
    Raises ValueError like Go's decoder on a syntax error.
    """
    text = raw.decode("utf-8", "replace")  # Go reads invalid UTF-8 as U+FFFD
    start = len(text) - len(text.lstrip(" \t\r\n"))
    value, _ = json.JSONDecoder(object_pairs_hook=_obj).raw_decode(text, start)
    if not isinstance(value, _Obj):
        raise ValueError("json: cannot unmarshal into Go value of type api.Request")
    folded = {_go_fold(f): f for f in GO_FIELDS}
    out: dict[str, Any] = {}
    for key, item in value.pairs:
        field_name = key if key in GO_FIELDS else folded.get(_go_fold(key))
        if field_name is None:
            continue
        if item is None:
            if field_name in _MAPS or field_name in _POINTERS:
                out[field_name] = None
            continue
        if field_name in _MAPS and isinstance(out.get(field_name), dict):
            out[field_name] = {**out[field_name], **item}
        else:
            out[field_name] = item
    return out


class RealClock:
    def now(self) -> float:
        return time.time()

    def call_later(self, delay: float, fn: Callable[[], None]) -> Any:
        return asyncio.get_running_loop().call_later(delay, fn)


@dataclass(order=True)
class _Timer:
    due: float
    seq: int
    fn: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """Virtual time: ``advance(seconds)`` fires the keep_alive timers that came due."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._timers: list[_Timer] = []
        self._seq = 0

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, fn: Callable[[], None]) -> _Timer:
        self._seq += 1
        timer = _Timer(self._now + delay, self._seq, fn)
        heapq.heappush(self._timers, timer)
        return timer

    def advance(self, seconds: float) -> None:
        end = self._now + seconds
        while self._timers and self._timers[0].due <= end:
            timer = heapq.heappop(self._timers)
            self._now = max(self._now, timer.due)
            if not timer.cancelled:
                timer.fn()
        self._now = end


@dataclass
class Runner:
    model: str
    options: dict[str, Any]
    session: float
    ref: int = 0
    timer: Any = None
    expires_at: float | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class FakeOllama:
    def __init__(
        self,
        models: tuple[str, ...] = ("gpt-oss:120b", "llama3.2:3b", "nomic-embed-text:latest"),
        *,
        load_seconds: float = 0.0,
        chunk_delay: float = 0.0,
        tokens: int = 3,
        default_keep_alive: float = 300.0,  # envconfig.KeepAlive(): OLLAMA_KEEP_ALIVE, 5m
        context_length: int = 4096,  # OLLAMA_CONTEXT_LENGTH
        clock: RealClock | ManualClock | None = None,
    ) -> None:
        self.models = tuple(_canonical(m) for m in models)
        self.load_seconds, self.chunk_delay, self.tokens = load_seconds, chunk_delay, tokens
        self.default_keep_alive = default_keep_alive
        self.defaults: dict[str, Any] = {"num_ctx": context_length, "num_batch": 512}
        self.clock = clock or RealClock()
        self.runners: dict[str, Runner] = {}
        self.loads: Counter[str] = Counter()
        self.unloads: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()  # requests, cancelled, completed
        self.last_keep_alive: dict[str, Any] = {}  # raw keep_alive as received, per model
        self.app: ASGIApp = _HostCheck(self._starlette())

    # --- scheduler (server/sched.go) ---------------------------------------------------
    async def acquire(self, model: str, keep_alive: float | None, opts: dict[str, Any]) -> Runner:
        wanted = {k: opts.get(k, self.defaults.get(k)) for k in RUNNER_KEYS}
        while True:
            runner = self.runners.get(model)
            if runner is None:
                runner = await self._load(model, keep_alive, wanted)
            await runner.ready.wait()
            if runner.options == wanted or self.runners.get(model) is not runner:
                break
            runner.session = 0  # needsReload: expire it, wait until idle, load again
            if runner.ref <= 0:
                self._unload(runner)
            else:
                await asyncio.sleep(0.01)
        runner.ref += 1  # useLoadedRunner
        if runner.timer is not None:
            runner.timer.cancel()
            runner.timer = None
        if keep_alive is not None:
            runner.session = keep_alive
        return runner

    async def _load(self, model: str, keep_alive: float | None, opts: dict[str, Any]) -> Runner:
        session = self.default_keep_alive if keep_alive is None else keep_alive
        runner = Runner(model, opts, session)
        self.runners[model] = runner
        await asyncio.sleep(self.load_seconds)
        self.loads[model] += 1
        runner.ready.set()
        return runner

    def release(self, runner: Runner) -> None:
        runner.ref -= 1
        if runner.ref > 0:
            return
        if runner.session <= 0:
            self._unload(runner)
            return
        runner.expires_at = self.clock.now() + min(runner.session, GO_MAX_SECONDS)
        if not math.isinf(runner.session):
            runner.timer = self.clock.call_later(runner.session, lambda: self._expire(runner))

    def _expire(self, runner: Runner) -> None:
        if runner.ref <= 0:
            self._unload(runner)

    def expire_now(self, model: str) -> None:  # Scheduler.expireRunner
        runner = self.runners.get(model)
        if runner is not None:
            runner.session = 0
            if runner.ref <= 0:
                self._unload(runner)

    def _unload(self, runner: Runner) -> None:
        if self.runners.get(runner.model) is runner:
            del self.runners[runner.model]
            self.unloads[runner.model] += 1
        if runner.timer is not None:
            runner.timer.cancel()

    # --- HTTP ---------------------------------------------------------------------------
    def _starlette(self) -> Starlette:
        async def running(_: Request) -> Response:
            return PlainTextResponse("Ollama is running")

        routes = [
            Route("/", running, methods=["GET", "HEAD"]),
            Route("/api/version", self._version, methods=["GET", "HEAD"]),
            Route("/api/tags", self._tags, methods=["GET", "HEAD"]),
            Route("/api/ps", self._ps),
            Route("/api/generate", self._native, methods=["POST"]),
            Route("/api/chat", self._native, methods=["POST"]),
            Route("/api/embed", self._native, methods=["POST"]),
            Route("/api/embeddings", self._native, methods=["POST"]),
            Route("/api/delete", self._delete, methods=["DELETE"]),
            Route("/api/pull", self._pull, methods=["POST"]),
            Route("/v1/models", self._v1_models),
            Route("/v1/chat/completions", self._v1_complete, methods=["POST"]),
            Route("/v1/completions", self._v1_complete, methods=["POST"]),
            Route("/_fake/stats", self._stats),
        ]
        return Starlette(routes=routes)

    async def _version(self, _: Request) -> Response:
        return JSONResponse({"version": "0.12.0-fake"})

    async def _tags(self, _: Request) -> Response:
        rows = [
            {
                "name": m,
                "model": m,
                "size": 1 << 30,
                "digest": "0" * 64,
                "modified_at": _iso(0),
                "details": {"format": "gguf"},
            }
            for m in self.models
        ]
        return JSONResponse({"models": rows})

    async def _ps(self, _: Request) -> Response:
        rows = []
        for r in self.runners.values():
            if not r.ready.is_set():
                continue
            expires = r.expires_at or self.clock.now() + min(r.session, GO_MAX_SECONDS)
            rows.append(
                {
                    "name": r.model,
                    "model": r.model,
                    "size": 1 << 30,
                    "size_vram": 1 << 30,
                    "digest": "0" * 64,
                    "expires_at": _iso(expires),
                    "context_length": r.options["num_ctx"],
                }
            )
        rows.sort(key=lambda x: x["expires_at"], reverse=True)
        return JSONResponse({"models": rows})

    async def _stats(self, _: Request) -> Response:
        return JSONResponse(
            {
                "loads": self.loads,
                "unloads": self.unloads,
                "counts": self.counts,
                "loaded": sorted(self.runners),
                "keep_alive": self.last_keep_alive,
            }
        )

    async def _delete(self, request: Request) -> Response:
        body = go_decode(await request.body())
        name = _canonical(str(body.get("model") or body.get("name") or ""))
        if name not in self.models:
            return JSONResponse({"error": f"model '{name}' not found"}, status_code=404)
        self.models = tuple(m for m in self.models if m != name)
        self.counts["deleted"] += 1
        return Response(status_code=200)

    async def _pull(self, request: Request) -> Response:
        body = go_decode(await request.body())
        name = _canonical(str(body.get("model") or body.get("name") or ""))
        self.models = tuple(dict.fromkeys((*self.models, name)))
        self.counts["pulled"] += 1
        return JSONResponse({"status": "success"})

    async def _native(self, request: Request) -> Response:
        try:
            body = go_decode(await request.body())
            keep_alive = parse_keep_alive(body.get("keep_alive"))
        except BadKeepAlive as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except ValueError:
            return JSONResponse({"error": "invalid request body"}, status_code=400)
        model, kind = _canonical(str(body.get("model", ""))), request.url.path.rsplit("/", 1)[1]
        if model not in self.models:
            return JSONResponse(
                {"error": f'model "{body.get("model")}" not found, try pulling it first'},
                status_code=404,
            )
        self.counts["requests"] += 1
        self.last_keep_alive[model] = body.get("keep_alive")
        empty = not body.get("prompt") if kind == "generate" else not body.get("messages")
        if kind in ("generate", "chat") and empty and keep_alive == 0:
            self.expire_now(model)
            return JSONResponse(_chunk(kind, model, "", done=True, reason="unload"))
        runner = await self.acquire(model, keep_alive, body.get("options") or {})
        if kind in ("embed", "embeddings") or empty:
            self.release(runner)
            return JSONResponse(_final(kind, model, body))
        n = int((body.get("options") or {}).get("num_predict") or self.tokens)
        stream = self._tokens(runner, kind, model, n, _ndjson)
        if body.get("stream", True):
            return StreamingResponse(stream, media_type="application/x-ndjson")
        async for _ in stream:
            pass
        return JSONResponse(_chunk(kind, model, "tok " * n, done=True, reason="stop"))

    async def _tokens(
        self, runner: Runner, kind: str, model: str, n: int, fmt: Callable[..., bytes]
    ) -> AsyncIterator[bytes]:
        done = False
        try:
            for i in range(n):
                if i:
                    await asyncio.sleep(self.chunk_delay)
                yield fmt(kind, model, "tok ", False)
            yield fmt(kind, model, "", True)
            done = True
            self.counts["completed"] += 1
        finally:
            if not done:
                self.counts["cancelled"] += 1  # the client (or the gateway) hung up mid-stream
            self.release(runner)

    async def _v1_models(self, _: Request) -> Response:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "library"} for m in self.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _v1_complete(self, request: Request) -> Response:
        body = go_decode(await request.body())  # openai/openai.go: Go structs as well
        model = _canonical(str(body.get("model", "")))
        if model not in self.models:
            err = {
                "message": f'model "{body.get("model")}" not found, try pulling it first',
                "type": "api_error",
                "param": None,
                "code": None,
            }
            return JSONResponse({"error": err}, status_code=404)
        self.counts["requests"] += 1
        kind = "chat" if request.url.path.endswith("chat/completions") else "text"
        runner = await self.acquire(model, None, {})  # no keep_alive, no num_ctx on /v1
        n = int(body.get("max_tokens") or self.tokens)
        stream = self._tokens(runner, kind, str(body.get("model")), n, _sse)
        if body.get("stream"):
            return StreamingResponse(stream, media_type="text/event-stream")
        async for _ in stream:
            pass
        return JSONResponse(_openai_object(kind, str(body.get("model")), "tok " * n, final=True))


def _canonical(name: str) -> str:
    """types/model/name.go: names compare case-insensitively; no tag means ``latest``."""
    name = name.lower()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _chunk(kind: str, model: str, text: str, done: bool, reason: str | None = None) -> Any:
    row: dict[str, Any] = {"model": model, "created_at": _iso(time.time()), "done": done}
    if kind == "chat":
        row["message"] = {"role": "assistant", "content": text}
    else:
        row["response"] = text
    if done:
        row["done_reason"] = reason or "stop"
    return row


def _final(kind: str, model: str, body: dict[str, Any]) -> Any:
    if kind == "embeddings":
        return {"embedding": [0.1, 0.2, 0.3]}
    if kind == "embed":
        inputs = body.get("input") or []
        count = 1 if isinstance(inputs, str) else len(inputs)
        return {"model": model, "embeddings": [[0.1, 0.2, 0.3]] * count}
    return _chunk(kind, model, "", done=True, reason="load")


def _ndjson(kind: str, model: str, text: str, done: bool) -> bytes:
    return json.dumps(_chunk(kind, model, text, done)).encode() + b"\n"


def _openai_object(kind: str, model: str, text: str, final: bool, delta: bool = False) -> Any:
    reason = "stop" if final else None
    if kind == "chat":
        key, content = ("delta", {"content": text}) if delta else ("message", None)
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason}
        choice[key] = content or {"role": "assistant", "content": text}
        obj = "chat.completion.chunk" if delta else "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": reason}
        obj = "text_completion"
    return {"id": "cmpl-fake", "object": obj, "created": 0, "model": model, "choices": [choice]}


def _sse(kind: str, model: str, text: str, done: bool) -> bytes:
    chunk = json.dumps(_openai_object(kind, model, text, done, delta=True))
    return f"data: {chunk}\n\n".encode() + (b"data: [DONE]\n\n" if done else b"")


class _HostCheck:
    """allowedHostsMiddleware: on a loopback listener only local Host names pass."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _allowed_host(dict(scope["headers"]).get(b"host")):
            await Response(status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _allowed_host(raw: bytes | None) -> bool:
    host = (raw or b"").decode("latin-1").lower()
    if host.startswith("["):  # [::1]:port
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
        return ip.is_loopback or ip.is_private or ip.is_unspecified
    except ValueError:
        pass
    local = ("", "localhost", socket.gethostname().lower())
    return host in local or host.endswith((".localhost", ".local", ".internal"))


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--load-seconds", type=float, default=0.0)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--models", default="gpt-oss:120b,llama3.2:3b,nomic-embed-text")
    args = parser.parse_args()
    fake = FakeOllama(
        tuple(args.models.split(",")), load_seconds=args.load_seconds, chunk_delay=args.chunk_delay
    )
    uvicorn.run(fake.app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
