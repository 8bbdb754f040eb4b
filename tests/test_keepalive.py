"""Pure policy functions: Ollama keep_alive parsing, the policy decision, reconcile, idle."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from llm_supervisor.config.models import Config, Policy
from llm_supervisor.gateway.idle import IdleWatcher
from llm_supervisor.gateway.keepalive import (
    KeepAliveParseError,
    focus_allows,
    parse_ollama_keep_alive,
    resolve_keep_alive,
    rule_for,
)
from llm_supervisor.gateway.pins import reconcile

INF = math.inf


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),  # absent/null: the runner keeps what it has
        (0, 0.0),
        ("0", 0.0),  # Go's ParseDuration special-cases "0"
        ("0s", 0.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        (600, 600.0),
        (0.5, 0.5),
        (-1, INF),  # negative number: forever
        ("-1s", INF),  # negative duration string: forever
        ("-5m", INF),
        (1e20, 0.0),  # overflows int64 nanoseconds: behaves like 0
    ],
)
def test_parse_like_ollama(value: object, seconds: float | None) -> None:
    assert parse_ollama_keep_alive(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", 'time: missing unit in duration "5"'),
        ("-1", 'time: missing unit in duration "-1"'),  # only the NUMBER -1 means forever
        ("", 'time: invalid duration ""'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        ("forever", 'time: invalid duration "forever"'),
        (True, "Unsupported type: 'bool'"),
        ({}, "Unsupported type: 'map[string]interface {}'"),
    ],
)
def test_parse_errors_carry_ollamas_message(value: object, message: str) -> None:
    with pytest.raises(KeepAliveParseError) as err:
        parse_ollama_keep_alive(value)
    assert str(err.value) == message


def policy(**ka: Any) -> Policy:
    rules = [
        {"match": "gpt-oss:*", "keep_alive": "forever"},
        {"match": "llama*", "keep_alive": "10m"},
    ]
    return Policy.model_validate(
        {"keep_alive": {"default": "30m", "rules": rules, **ka}, "pin": ["pinned:1b"]}
    )


# (mode, client_unload, model, client value) → (applied wire value, changed)
DECISIONS = [
    ("enforce", "deny", "gpt-oss:120b", 0, -1, True),
    ("enforce", "deny", "gpt-oss:120b", "0s", -1, True),
    ("enforce", "deny", "gpt-oss:120b", "10m", -1, True),
    ("enforce", "deny", "gpt-oss:120b", None, -1, True),
    ("enforce", "deny", "gpt-oss:120b", -1, -1, False),
    ("enforce", "deny", "llama3.2:3b", "1h", 600, True),
    ("enforce", "deny", "llama3.2:3b", "10m", "10m", False),
    ("enforce", "deny", "mistral:7b", None, 1800, True),
    ("enforce", "deny", "pinned:1b", "5m", -1, True),
    ("enforce", "deny", "gpt-oss:120b", 1e20, -1, True),  # overflow = unload, denied
    ("enforce", "allow", "gpt-oss:120b", 0, 0, False),
    ("enforce", "allow", "gpt-oss:120b", "10m", -1, True),
    ("floor", "deny", "llama3.2:3b", "1h", "1h", False),
    ("floor", "deny", "llama3.2:3b", "1m", 600, True),
    ("floor", "deny", "llama3.2:3b", "0s", 600, True),
    ("floor", "allow", "llama3.2:3b", "0s", "0s", False),
    ("floor", "deny", "llama3.2:3b", None, 600, True),
    ("observe", "deny", "gpt-oss:120b", 0, 0, False),
    ("observe", "deny", "gpt-oss:120b", None, None, False),
]


@pytest.mark.parametrize(("mode", "unload", "model", "asked", "applied", "changed"), DECISIONS)
def test_decisions(
    mode: str, unload: str, model: str, asked: object, applied: object, changed: bool
) -> None:
    decision = resolve_keep_alive(model, asked, policy(mode=mode, client_unload=unload))
    assert (decision.applied, decision.changed) == (applied, changed)
    assert decision.asked == asked


def test_rules_first_match_and_latest_tag() -> None:
    p = policy()
    assert rule_for("gpt-oss:20b", p) == ("gpt-oss:*", INF)
    assert rule_for("llama3.2", p) == ("llama*", 600.0)
    assert rule_for("pinned", p)[0] == "default"  # pinned:1b is a different tag
    assert rule_for("pinned:1b", p) == ("pin", INF)
    assert (
        "would apply forever" in resolve_keep_alive("gpt-oss:1b", 0, policy(mode="observe")).reason
    )


def test_focus() -> None:
    p = Policy.model_validate({"focus": ["llama3.2", "qwen*"]})
    assert focus_allows("llama3.2:latest", p) and focus_allows("qwen3-8b", p)
    assert not focus_allows("gpt-oss:120b", p)
    assert focus_allows("anything", Policy())


NOW = 1_800_000_000.0


def ps(name: str, remaining: float) -> dict[str, Any]:
    return {"name": name, "expires_at": datetime.fromtimestamp(NOW + remaining, UTC).isoformat()}


FOREVER_LEFT = 292 * 365 * 86400.0


@pytest.mark.parametrize(
    ("models", "last", "expected"),
    [
        ([], {}, [("pinned:1b", "not loaded")]),
        ([ps("pinned:1b", FOREVER_LEFT)], {}, []),
        ([ps("pinned:1b", 300)], {}, [("pinned:1b", "shorter than forever")]),
        ([ps("pinned:1b", FOREVER_LEFT), ps("gpt-oss:120b", 0)], {}, [("gpt-oss:120b", "forever")]),
        # 10m rule, gateway request 1 min ago: expiring in 9 min is right, in 1 min is short
        ([ps("pinned:1b", FOREVER_LEFT), ps("llama3.2:3b", 540)], {"llama3.2:3b": NOW - 60}, []),
        (
            [ps("pinned:1b", FOREVER_LEFT), ps("llama3.2:3b", 60)],
            {"llama3.2:3b": NOW - 60},
            [("llama3.2:3b", "before")],
        ),
        # loaded with forever by someone else, policy says 10m: enforce brings it back
        (
            [ps("pinned:1b", FOREVER_LEFT), ps("llama3.2:3b", FOREVER_LEFT)],
            {},
            [("llama3.2:3b", "longer")],
        ),
    ],
)
def test_reconcile(models: list[Any], last: dict[str, float], expected: list[Any]) -> None:
    actions = reconcile(models, policy(), NOW, last_request=last)
    assert [a.model for a in actions] == [m for m, _ in expected]
    assert all(why in a.reason for a, (_, why) in zip(actions, expected, strict=True))
    assert all(a.keep_alive == -1 for a in actions if a.model != "llama3.2:3b")


def test_reconcile_observe_only_loads_pins_and_skips_busy() -> None:
    assert [a.model for a in reconcile([ps("llama3.2:3b", 1)], policy(mode="observe"), NOW)] == [
        "pinned:1b"
    ]
    busy = frozenset({"gpt-oss:120b"})
    assert reconcile([ps("gpt-oss:120b", 1)], policy(), NOW, pins=[], busy=busy) == []


def idle_config() -> Config:
    def svc(name: str, served: str, engine: str = "vllm") -> dict[str, Any]:
        spec: dict[str, Any] = {"engine": engine, "port": 9000 + len(name)}
        if engine == "vllm":
            spec |= {"model": f"org/{served}", "served_name": served}
        return {"name": name, "spec": spec, "gpus": (), "source": "t"}

    services = {
        "a": svc("a", "llama-8b"),
        "b": svc("bb", "gpt-oss-20b"),
        "c": svc("ccc", "other"),
        "o": svc("o", "", engine="ollama"),
    }
    return Config.model_validate(
        {
            "services": services,
            "policy": {
                "keep_alive": {
                    "default": "30m",
                    "rules": [
                        {"match": "gpt-oss*", "keep_alive": "forever"},
                        {"match": "llama*", "keep_alive": "10m"},
                    ],
                }
            },
        }
    )


class IdleBackend:
    """Records what the watcher asks; the services themselves decide (test_in_use.py)."""

    def __init__(self, stops: set[str]) -> None:
        self.asked: list[tuple[str, float]] = []
        self.stops = stops

    def config(self) -> Config:
        return idle_config()

    async def stop_if_idle(self, service: str, idle_for: float) -> bool:
        self.asked.append((service, idle_for))
        return service in self.stops


async def test_idle_watcher_asks_each_vllm_service_with_its_keep_alive() -> None:
    backend = IdleBackend(stops={"c"})
    assert await IdleWatcher(backend).check_once() == ["c"]  # type: ignore[arg-type]
    # b serves a gpt-oss model (forever) and o is Ollama's: neither is asked.
    assert backend.asked == [("a", 600.0), ("c", 1800.0)]
