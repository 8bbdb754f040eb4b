"""Gateway latency histograms: what clients feel, by service and a fixed set of route kinds."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llm_supervisor.gateway.stats import BUCKETS, GatewayStats, Histogram
from tests import test_gateway
from tests.test_gateway import SMALL, RigFactory

rig_factory = test_gateway.rig_factory  # the fixture: fake Ollama and vLLM behind a gateway

CHUNK_DELAY = 0.05  # the fakes pause this long between streamed chunks


def scrape(stats: GatewayStats) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(stats.collector())
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict[Any, float], name: str, service: str, route: str, **extra: str) -> float:
    labels = tuple(sorted({"service": service, "route": route, **extra}.items()))
    return samples[(name, labels)]


def test_histogram_buckets_are_cumulative_with_le_semantics() -> None:
    hist = Histogram()
    for seconds in (0.005, 0.006, 2.0, 10_000.0):
        hist.observe(seconds)
    buckets = dict(hist.cumulative())
    assert buckets["0.005"] == 1  # le: a value equal to the bound is inside it
    assert buckets["0.01"] == 2 and buckets["1.0"] == 2 and buckets["2.5"] == 3
    assert buckets[repr(BUCKETS[-1])] == 3 and buckets["+Inf"] == 4
    assert hist.total == 0.005 + 0.006 + 2.0 + 10_000.0


async def test_stream_records_duration_and_time_to_first_byte(rig_factory: RigFactory) -> None:
    rig = await rig_factory(chunk_delay=CHUNK_DELAY)
    parts = [
        p
        async for p in await rig.ollama().chat(
            SMALL, [{"role": "user", "content": "x"}], stream=True
        )
    ]
    assert len(parts) == 4
    samples = scrape(rig.gw.stats)
    name = "llm_supervisor_gateway_request_seconds"
    assert sample(samples, f"{name}_count", "ollama", "chat") == 1
    total = sample(samples, f"{name}_sum", "ollama", "chat")
    first = sample(samples, "llm_supervisor_gateway_first_byte_seconds_sum", "ollama", "chat")
    # The first chunk left before the fake paused between the later ones.
    assert first > 0 and total - first >= CHUNK_DELAY
    assert sample(samples, f"{name}_bucket", "ollama", "chat", le="+Inf") == 1


async def test_answer_in_one_piece_has_no_first_byte_and_counts_the_start_wait(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory()
    rig.backend.start_delay = 0.2  # qwen is on-demand: the first request waits for its start
    body = {"model": "qwen3-8b", "prompt": "x", "max_tokens": 2}
    async with httpx.AsyncClient(base_url=rig.url) as client:
        assert (await client.post("/v1/completions", json=body)).status_code == 200
    stats = rig.gw.stats
    assert stats.snapshot()["latency_counts"] == {"qwen/completion": 1}
    assert stats.snapshot()["first_byte_counts"] == {}
    assert stats.latency[("qwen", "completion")].total >= 0.2


async def test_route_label_is_a_fixed_set_whatever_the_path(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    async with httpx.AsyncClient(base_url=rig.url) as client:
        for i in range(3):
            await client.get(f"/api/made-up-{i}")
        await client.post("/api/embed", json={"model": SMALL, "input": "x"})
        await client.post("/v1/chat/completions", json={"model": SMALL, "messages": []})
    counts = rig.gw.stats.snapshot()["latency_counts"]
    assert counts == {"ollama/other": 3, "ollama/embed": 1, "ollama/chat": 1}
