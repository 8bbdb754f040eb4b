"""Gateway counters: plain dicts on the hot path, turned into Prometheus metrics on scrape."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from ..config.modelnames import canonical_model_name

OTHER = "other"  # the label of every model no service offers and no rule names


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
    bad_keep_alive: int = 0
    refusals: Counter[str] = field(default_factory=Counter)  # reason: host, no_key, bad_key …
    key_requests: Counter[str] = field(default_factory=Counter)  # API key name (never the key)
    known: Callable[[], Mapping[str, str]] = lambda: {}

    def label(self, model: str) -> str:
        return self.known().get(canonical_model_name(model), OTHER)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-friendly copy, for status output and tests."""
        return {
            "requests": {f"{s}/{a}": n for (s, a), n in self.requests.items()},
            "rewrites": {f"{m}|{r}|{k}": n for (m, r, k), n in self.rewrites.items()},
            "observed": {f"{m}|{r}": n for (m, r), n in self.observed.items()},
            "focus_refusals": dict(self.focus_refusals),
            "upstream_errors": dict(self.upstream_errors),
            "disconnects": dict(self.disconnects),
            "bad_keep_alive": self.bad_keep_alive,
            "refusals": dict(self.refusals),
            "key_requests": dict(self.key_requests),
        }

    def collector(self) -> Collector:
        """Register with ``registry.register(stats.collector())``."""
        return _StatsCollector(self)


class _StatsCollector(Collector):
    def __init__(self, stats: GatewayStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
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


def _family(name: str, doc: str, labels: list[str], values: Any) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in dict(values).items():
        family.add_metric(list(key), value)
    return family
