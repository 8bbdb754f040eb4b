"""Gateway counters: plain dicts on the hot path, turned into Prometheus metrics on scrape.

Latency histograms are kept the same way (a list of bucket counts per label set, one
``bisect`` per request), not with prometheus_client's Histogram: its per-child locks and
label lookups cost more than the rest of the bookkeeping of a request together.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..config.modelnames import canonical_model_name

OTHER = "other"  # the label of every model no service offers and no rule names
# Seconds, from a cached answer to a long generation (and an on-demand start behind it).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
           300.0, 600.0)  # fmt: skip
_LE = [*(repr(b) for b in BUCKETS), "+Inf"]  # "0.005", "1.0": as prometheus_client writes
# The route label: a fixed set, whatever paths clients send.
ROUTE_KINDS = {
    "/api/chat": "chat", "/v1/chat/completions": "chat", "/api/generate": "generate",
    "/v1/completions": "completion", "/api/embed": "embed", "/api/embeddings": "embed",
    "/v1/embeddings": "embed",
}  # fmt: skip
OTHER_ROUTE = "other"


class Histogram:
    """Bucket counts (not cumulative; the last one is +Inf) and the sum of observations."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1  # le: bound >= value
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        running, out = 0, []
        for le, count in zip(_LE, self.counts, strict=True):
            running += count
            out.append((le, float(running)))
        return out


@dataclass
class GatewayStats:
    """Model labels are bounded: a client may send any name, so only models the config knows
    (``known``: canonical name → the config's spelling) get their own label."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (service, api)
    rewrites: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (model, rule, kind)
    observed: Counter[tuple[str, str]] = field(default_factory=Counter)  # (model, rule)
    focus_refusals: Counter[str] = field(default_factory=Counter)  # model
    upstream_errors: Counter[str] = field(default_factory=Counter)  # service
    disconnects: Counter[str] = field(default_factory=Counter)  # service
    fallbacks: Counter[tuple[str, str]] = field(default_factory=Counter)  # (model, fallback)
    bad_keep_alive: int = 0
    refusals: Counter[str] = field(default_factory=Counter)  # reason: host, no_key, bad_key …
    key_requests: Counter[str] = field(default_factory=Counter)  # API key name (never the key)
    known: Callable[[], Mapping[str, str]] = lambda: {}

    def label(self, model: str) -> str:
        return self.known().get(canonical_model_name(model), OTHER)

    latency: dict[tuple[str, str], Histogram] = field(default_factory=dict)  # (service, route)
    first_byte: dict[tuple[str, str], Histogram] = field(default_factory=dict)  # streams only

    def observe(self, service: str, path: str, seconds: float, first_byte: float | None) -> None:
        """One forwarded request: its duration and, for a stream, its time to first byte."""
        key = (service, ROUTE_KINDS.get(path, OTHER_ROUTE))
        hist = self.latency.get(key) or self.latency.setdefault(key, Histogram())
        hist.observe(seconds)
        if first_byte is not None:
            hist = self.first_byte.get(key) or self.first_byte.setdefault(key, Histogram())
            hist.observe(first_byte)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-friendly copy, for status output and tests."""
        return {
            "requests": {f"{s}/{a}": n for (s, a), n in self.requests.items()},
            "rewrites": {f"{m}|{r}|{k}": n for (m, r, k), n in self.rewrites.items()},
            "observed": {f"{m}|{r}": n for (m, r), n in self.observed.items()},
            "focus_refusals": dict(self.focus_refusals),
            "upstream_errors": dict(self.upstream_errors),
            "disconnects": dict(self.disconnects),
            "fallbacks": {f"{m} -> {f}": n for (m, f), n in self.fallbacks.items()},
            "bad_keep_alive": self.bad_keep_alive,
            "refusals": dict(self.refusals),
            "key_requests": dict(self.key_requests),
            "latency_counts": {f"{s}/{r}": sum(h.counts) for (s, r), h in self.latency.items()},
            "first_byte_counts": {
                f"{s}/{r}": sum(h.counts) for (s, r), h in self.first_byte.items()
            },
        }

    def collector(self) -> Collector:
        """Register with ``registry.register(stats.collector())``."""
        return _StatsCollector(self)


class _StatsCollector(Collector):
    def __init__(self, stats: GatewayStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        yield _family(
            "llm_supervisor_gateway_requests", "Requests routed", ["service", "api"], s.requests
        )
        yield _family(
            "llm_supervisor_keepalive_rewrites",
            "Requests whose keep_alive or options the gateway changed",
            ["model", "rule", "kind"],
            s.rewrites,
        )
        yield _family(
            "llm_supervisor_keepalive_observed",
            "observe mode: requests the policy would have changed",
            ["model", "rule"],
            s.observed,
        )
        yield _family(
            "llm_supervisor_focus_refusals",
            "Requests refused by the focus list",
            ["model"],
            {(k,): v for k, v in s.focus_refusals.items()},
        )
        yield _family(
            "llm_supervisor_gateway_upstream_errors",
            "Upstream connection failures",
            ["service"],
            {(k,): v for k, v in s.upstream_errors.items()},
        )
        yield _family(
            "llm_supervisor_gateway_client_disconnects",
            "Client disconnects that cancelled an upstream request",
            ["service"],
            {(k,): v for k, v in s.disconnects.items()},
        )
        yield _family(
            "llm_supervisor_gateway_refusals",
            "Requests refused before routing (host, no_key, bad_key, admin, model, body)",
            ["reason"],
            {(k,): v for k, v in s.refusals.items()},
        )
        yield _family(
            "llm_supervisor_gateway_key_requests",
            "Requests accepted per API key name",
            ["key"],
            {(k,): v for k, v in s.key_requests.items()},
        )
        yield _histogram(
            "llm_supervisor_gateway_request_seconds",
            "Time from a request reaching the gateway until its answer was sent (incl. a start)",
            s.latency,
        )
        yield _histogram(
            "llm_supervisor_gateway_first_byte_seconds",
            "Streamed answers: time from the request until the first body chunk was sent",
            s.first_byte,
        )
        yield _family(
            "llm_supervisor_gateway_fallbacks",
            "Requests served by a fallback model (policy fallbacks)",
            ["model", "fallback"],
            s.fallbacks,
        )


def _histogram(name: str, doc: str, values: dict[tuple[str, str], Histogram]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=["service", "route"])
    for labels, hist in list(values.items()):  # a copy: requests may add keys meanwhile
        family.add_metric(list(labels), hist.cumulative(), hist.total)
    return family


def _family(name: str, doc: str, labels: list[str], values: Any) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in dict(values).items():
        family.add_metric(list(key), value)
    return family
