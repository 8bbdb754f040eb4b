"""Reload storms: 100 SIGHUPs in a second, and 500 invalid configs written while it runs."""

from __future__ import annotations

import copy
import random
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_supervisor.config.load import load_config
from llm_supervisor.errors import ConfigError
from tests.daemon_harness import profile_text, run_daemon, write_atomic

from .conftest import engines

pytestmark = pytest.mark.chaos


@pytest.mark.timeout(60)
def test_sighup_storm_coalesces_into_one_or_two_reloads(tmp_path: Path) -> None:
    write_atomic(tmp_path / "cpu.yaml", profile_text(engines(4)))
    with run_daemon(tmp_path, extra_args=["--no-watch"]) as daemon:
        pids = daemon.pids()
        before = sum(daemon.reload_counts().values())
        start = time.monotonic()
        for i in range(100):  # 100 within half a second
            daemon.signal(signal.SIGHUP)
            time.sleep(max(0.0, start + (i + 1) / 200 - time.monotonic()))
        assert time.monotonic() - start < 1.0
        # Signals of one kind coalesce in the kernel while pending: count what arrived.
        triggered = len(daemon.events("reload.triggered"))
        time.sleep(2.0)  # past the throttle window: a trailing reload would have run
        daemon.wait_status(lambda s: s["reload"]["result"] != "none", 5, "a reload")
        counts = daemon.reload_counts()
        reloads = sum(counts.values()) - before
        print(f"SIGHUP storm: {triggered}+ signals seen, {reloads} reloads {counts}")
        assert 1 <= reloads <= 2, counts
        assert set(counts) <= {"unchanged"}, counts
        assert daemon.pids() == pids, "no service restarted"
        assert all(s["restarts"] == 0 for s in daemon.services().values())


# -- 500 invalid configs --------------------------------------------------------------------

Mutation = Callable[[dict[str, Any], random.Random], tuple[str, str, str]]


def _service(profile: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    services: dict[str, Any] = profile["services"]
    return services[rng.choice(sorted(services))]


def _dump(profile: dict[str, Any]) -> str:
    return yaml.safe_dump(profile, sort_keys=False)


def unknown_key(p: dict[str, Any], rng: random.Random) -> tuple[str, str, str]:
    _service(p, rng)[f"bogus_{rng.randrange(1000)}"] = 1
    return "cpu.yaml", _dump(p), "bogus_"


def bad_port(p: dict[str, Any], rng: random.Random) -> tuple[str, str, str]:
    _service(p, rng)["port"] = rng.choice(["http", -5, 70000, "80a"])
    return "cpu.yaml", _dump(p), "port"


def same_port(p: dict[str, Any], rng: random.Random) -> tuple[str, str, str]:
    a, b = list(p["services"].values())[:2]
    b["port"] = a["port"]
    return "cpu.yaml", _dump(p), "port"


def bad_engine(p: dict[str, Any], rng: random.Random) -> tuple[str, str, str]:
    _service(p, rng)["engine"] = rng.choice(["tgi", "VLLM", "", "llama.cpp"])
    return "cpu.yaml", _dump(p), "engine"


def bad_duration(p: dict[str, Any], rng: random.Random) -> tuple[str, str, str]:
    _service(p, rng)["health"]["interval"] = rng.choice(["soon", "-3s", "10 parsecs", []])
    return "cpu.yaml", _dump(p), "interval"


def broken_yaml(p: dict[str, Any], rng: random.Random) -> tuple[str, str, str]:
    text = _dump(p)
    cut = rng.randrange(len(text) // 3, len(text))
    return "cpu.yaml", text[:cut] + rng.choice(["\n  x: [unclosed", "\n\t- tab", ": : :\n"]), ""


def duplicate_key(p: dict[str, Any], rng: random.Random) -> tuple[str, str, str]:
    return "cpu.yaml", _dump(p) + "gpu: cpu\n", "gpu"


def bad_policy(p: dict[str, Any], rng: random.Random) -> tuple[str, str, str]:
    text = rng.choice([
        "keep_alive:\n  default: off\n",
        "keep_alive:\n  mode: sometimes\n",
        "keep_alive:\n  rules:\n    - {match: 'x*'}\n",
        "pressure: {warning: 2.5}\n",
        "pin: gpt-oss\nfocus: 3\n",
    ])  # fmt: skip
    return "policy.yaml", text, ""


def not_a_mapping(p: dict[str, Any], rng: random.Random) -> tuple[str, str, str]:
    return "cpu.yaml", rng.choice(["- a\n- b\n", "just text\n", "services: [1, 2]\n"]), ""


MUTATIONS: list[Mutation] = [unknown_key, bad_port, same_port, bad_engine, bad_duration,
                             broken_yaml, duplicate_key, bad_policy, not_a_mapping]  # fmt: skip


def invalid_configs(base: dict[str, Any], n: int, seed: int) -> list[tuple[str, str, str]]:
    """``n`` configs, each checked to be rejected by the loader before it is used."""
    rng = random.Random(seed)
    configs = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        while len(configs) < n:
            name, text, hint = rng.choice(MUTATIONS)(copy.deepcopy(base), rng)
            (root / "cpu.yaml").write_text(_dump(base))
            (root / "policy.yaml").write_text("{}\n")
            (root / name).write_text(text)
            try:
                load_config(root)
            except ConfigError:
                configs.append((name, text, hint))
    return configs


@pytest.mark.timeout(120)
def test_500_invalid_configs_restart_nothing_and_each_error_shows(tmp_path: Path) -> None:
    base = {"gpu": "cpu", "services": engines(3)}
    write_atomic(tmp_path / "cpu.yaml", _dump(base))
    write_atomic(tmp_path / "policy.yaml", "{}\n")
    configs = invalid_configs(base, 500, seed=500)
    rng = random.Random(1)
    with run_daemon(tmp_path) as daemon:
        pids = daemon.pids()
        client = daemon.client()
        slowest = 0.0
        for i, (name, text, hint) in enumerate(configs):
            write_atomic(tmp_path / name, text)
            if name == "policy.yaml":
                write_atomic(tmp_path / "cpu.yaml", _dump(base))
            else:
                write_atomic(tmp_path / "policy.yaml", "{}\n")
            if i % 25 == 0:  # sample: this very config is rejected and status says why
                result = client.reload(wait=True)
                assert result["result"] == "rejected", (text, result)
                shown = client.status()["reload"]
                assert shown["result"] == "rejected" and shown["errors"] == result["errors"]
                assert name in "\n".join(shown["errors"]) and hint in "\n".join(shown["errors"])
            elif i % 5 == 0:  # the daemon answers while reloads are rejected around it
                started = time.monotonic()
                client.status()
                slowest = max(slowest, time.monotonic() - started)
            else:
                time.sleep(rng.uniform(0, 0.01))  # let the watcher catch some of them
        assert slowest < 2.0, f"status took {slowest:.2f}s during the storm"
        write_atomic(tmp_path / "cpu.yaml", _dump(base))
        write_atomic(tmp_path / "policy.yaml", "{}\n")
        assert client.reload(wait=True)["result"] == "unchanged"
        counts = daemon.reload_counts()
        assert "applied" not in counts and counts["rejected"] >= 20, counts
        assert daemon.pids() == pids, "an invalid config restarted something"
        assert all(s["restarts"] == 0 for s in daemon.services().values())
        print(f"invalid configs: reloads {counts}, slowest status {slowest * 1e3:.0f} ms")
