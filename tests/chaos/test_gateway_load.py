"""The gateway under load: 10,000 requests, 200 at a time, a fifth of them hanging up early.

The fake Ollama behind the daemon counts requests, completed and cancelled streams
(GET /_fake/stats): afterwards every upstream request must have ended one way or the other
(none left open), every request that did not hang up must have succeeded, and the daemon's
RSS must come back near where it was after a warm-up.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from tests.daemon_harness import fake_ollama, profile_text, run_daemon, wait_until, write_atomic

from .conftest import distinct_ports

pytestmark = pytest.mark.chaos

MODEL = "llama3.2:3b"
TOTAL, CONCURRENT = 10_000, 200


async def one(session: aiohttp.ClientSession, base: str, kind: str) -> str:
    """One request of ``kind``; returns "ok", "hung up" or an error description."""
    stream = kind != "generate"
    messages = [{"role": "user", "content": "x"}]
    if kind == "openai":
        url = f"{base}/v1/chat/completions"
        body: dict[str, Any] = {"model": MODEL, "stream": True, "messages": messages}
    else:
        api = "generate" if kind == "generate" else "chat"
        body = {"model": MODEL, "stream": stream, "prompt": "x", "messages": messages}
        if kind == "hangup":
            body["options"] = {"num_predict": 400}  # a long answer: we leave in the middle
        url = f"{base}/api/{api}"
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            return f"{kind}: HTTP {resp.status} {await resp.text()}"
        if kind == "hangup":
            await resp.content.readline()
            resp.close()  # drop the connection mid-stream
            return "hung up"
        text = await resp.text()
    if kind == "openai":
        return "ok" if text.rstrip().endswith("data: [DONE]") else f"openai: truncated {text[-80:]}"
    last = json.loads(text.strip().splitlines()[-1])
    return "ok" if last.get("done") else f"{kind}: not done {last}"


async def load(base: str, total: int, concurrent: int, seed: int) -> Counter[str]:
    rng = random.Random(seed)
    kinds = rng.choices(["generate", "chat", "openai", "hangup"], [4, 3, 1, 2], k=total)
    results: Counter[str] = Counter()
    queue = iter(kinds)
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrent)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            for kind in queue:
                try:
                    results[await one(session, base, kind)] += 1
                except (TimeoutError, aiohttp.ClientError) as exc:
                    results[f"{kind}: {type(exc).__name__} {exc}"] += 1

        await asyncio.gather(*(worker() for _ in range(concurrent)))
    return results


def fake_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/stats", timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


@pytest.mark.timeout(240)
def test_10000_requests_with_early_hangups_leave_nothing_open(tmp_path: Path) -> None:
    (port,) = distinct_ports(1)
    spec = fake_ollama(port, [MODEL], health={"interval": 1.0})
    spec["command"] += ["--chunk-delay", "0.002", "--models", MODEL]
    write_atomic(tmp_path / "gpu0.yaml", profile_text({"ollama": spec}))
    write_atomic(tmp_path / "policy.yaml", "{}\n")
    with run_daemon(tmp_path, gateway=True) as daemon:
        proc = psutil.Process(daemon.proc.pid)
        warm = asyncio.run(load(daemon.gateway_url, 1000, CONCURRENT, seed=1))
        assert set(warm) <= {"ok", "hung up"}, warm
        baseline = proc.memory_info().rss
        started = time.monotonic()
        results = asyncio.run(load(daemon.gateway_url, TOTAL, CONCURRENT, seed=2))
        elapsed = time.monotonic() - started
        errors = {k: v for k, v in results.items() if k not in ("ok", "hung up")}
        assert not errors, errors
        assert results["hung up"] > 1000

        def drained() -> dict[str, Any] | None:
            stats = fake_stats(port)
            c = stats["counts"]
            return stats if c["requests"] == c["completed"] + c["cancelled"] else None

        stats = wait_until(drained, 20, "every upstream request finished or cancelled")
        assert stats["counts"]["cancelled"] >= results["hung up"] * 0.9, stats
        time.sleep(2.0)  # let the event loop drop what the hung-up requests held
        after = proc.memory_info().rss
        grown = (after - baseline) / 2**20
        print(
            f"gateway load: {sum(results.values())} requests in {elapsed:.1f}s, {results}, "
            f"upstream {stats['counts']}, RSS {baseline / 2**20:.1f} -> {after / 2**20:.1f} MB"
        )
        assert grown < 30, f"daemon RSS grew {grown:.1f} MB over its warm baseline"
        assert daemon.services()["ollama"]["restarts"] == 0
