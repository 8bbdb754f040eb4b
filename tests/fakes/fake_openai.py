"""A tiny vLLM-like OpenAI server for gateway tests: one served name, SSE streaming,
counters for requests and client cancellations (GET /_fake/stats)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.fake_ollama import _openai_object, _sse


class FakeOpenAI:
    def __init__(self, served_name: str, *, chunk_delay: float = 0.0, tokens: int = 3) -> None:
        self.served_name = served_name
        self.chunk_delay = chunk_delay
        self.tokens = tokens
        self.counts: Counter[str] = Counter()
        self.app = Starlette(
            routes=[
                Route("/health", self._health),
                Route("/v1/models", self._models),
                Route("/v1/chat/completions", self._complete, methods=["POST"]),
                Route("/v1/completions", self._complete, methods=["POST"]),
                Route("/_fake/stats", self._stats),
            ]
        )

    async def _health(self, _: Request) -> Response:
        return Response(status_code=200)

    async def _stats(self, _: Request) -> Response:
        return JSONResponse(dict(self.counts))

    async def _models(self, _: Request) -> Response:
        row = {"id": self.served_name, "object": "model", "created": 0, "owned_by": "vllm"}
        return JSONResponse({"object": "list", "data": [row]})

    async def _complete(self, request: Request) -> Response:
        body = await request.json()
        if body.get("model") != self.served_name:  # vLLM's own 404 shape
            err = {
                "message": f"The model `{body.get('model')}` does not exist.",
                "type": "NotFoundError",
                "param": None,
                "code": 404,
            }
            return JSONResponse({"error": err}, status_code=404)
        self.counts["requests"] += 1
        kind = "chat" if request.url.path.endswith("chat/completions") else "text"
        n = int(body.get("max_tokens") or self.tokens)
        if body.get("stream"):
            return StreamingResponse(self._stream(kind, n), media_type="text/event-stream")
        return JSONResponse(_openai_object(kind, self.served_name, "tok " * n, final=True))

    async def _stream(self, kind: str, n: int) -> AsyncIterator[bytes]:
        done = False
        try:
            for i in range(n):
                if i:
                    await asyncio.sleep(self.chunk_delay)
                yield _sse(kind, self.served_name, "tok ", False)
            yield _sse(kind, self.served_name, "", True)
            done = True
        finally:
            self.counts["completed" if done else "cancelled"] += 1
