"""Pure tables: which edit restarts, updates live, starts, stops; what the watcher ignores."""

from __future__ import annotations

from typing import Any

import pytest
from watchfiles import Change

from llm_supervisor.config.models import Config, Policy, ServiceConfig, ServiceSpec
from llm_supervisor.reload.reloader import ConfigDiff, diff_configs, keep_rollbacks
from llm_supervisor.reload.watcher import relevant

BASE: dict[str, Any] = {
    "engine": "vllm",
    "model": "Qwen/Qwen3-8B-AWQ",
    "served_name": "qwen",
    "port": 8001,
    "command": ["/opt/vllm/bin/vllm", "serve"],
    "args": {"max-model-len": 16384, "gpu-memory-utilization": 0.85},
    "env": {"HF_HOME": "/srv/hf"},
}


def svc(name: str = "qwen", gpus: tuple[int | str, ...] = (0,), **changes: Any) -> ServiceConfig:
    spec = ServiceSpec.model_validate({**BASE, **changes})
    return ServiceConfig(name=name, spec=spec, gpus=gpus, source="/etc/p/gpu0.yaml")


def config(*services: ServiceConfig, **policy: Any) -> Config:
    return Config(services={s.name: s for s in services}, policy=Policy.model_validate(policy))


RESTART = [
    ("args value", {"args": {"max-model-len": 8192, "gpu-memory-utilization": 0.85}}),
    ("args added", {"args": {**BASE["args"], "quantization": "awq_marlin"}}),
    ("args removed", {"args": {"max-model-len": 16384}}),
    ("env", {"env": {"HF_HOME": "/data/hf"}}),
    ("port", {"port": 8002}),
    ("model", {"model": "Qwen/Qwen3-14B-AWQ"}),
    ("served_name", {"served_name": "qwen-big"}),
    ("command", {"command": ["/srv/vllm/bin/vllm", "serve"]}),
    ("engine", {"engine": "command", "model": None, "served_name": None}),
]

LIVE = [
    ("health interval", {"health": {"interval": "30s"}}),
    ("startup timeout", {"health": {"startup_timeout": "40m"}}),
    ("restart policy", {"restart": {"max_failures": 2}}),
    ("stop timeout", {"stop_timeout": "5s"}),
    ("start mode", {"start": "on-demand"}),
]


@pytest.mark.parametrize(("what", "changes"), RESTART, ids=[r[0] for r in RESTART])
def test_launch_field_changes_restart_only_that_service(what: str, changes: dict[str, Any]) -> None:
    other = svc("other", port=9000, served_name="other")
    diff = diff_configs(config(svc(), other), config(svc(**changes), other))
    assert diff == ConfigDiff(restarted=("qwen",))


@pytest.mark.parametrize(("what", "changes"), LIVE, ids=[r[0] for r in LIVE])
def test_other_service_fields_apply_live(what: str, changes: dict[str, Any]) -> None:
    diff = diff_configs(config(svc()), config(svc(**changes)))
    assert diff == ConfigDiff(updated=("qwen",))


def test_gpu_move_restarts() -> None:
    assert diff_configs(config(svc()), config(svc(gpus=(1,)))).restarted == ("qwen",)
    assert diff_configs(config(svc()), config(svc(gpus=(0, 1)))).restarted == ("qwen",)


def test_arg_order_and_yaml_spelling_are_not_changes() -> None:
    reordered = {"gpu-memory-utilization": 0.85, "max-model-len": 16384}
    assert diff_configs(config(svc()), config(svc(args=reordered))).empty
    # "10s" and 10 are the same duration once validated
    same = diff_configs(
        config(svc(health={"interval": "10s"})), config(svc(health={"interval": 10}))
    )
    assert same.empty


def test_moving_a_service_to_another_file_alone_is_live() -> None:
    moved = svc().model_copy(update={"source": "/etc/p/gpu1.yaml"})
    assert diff_configs(config(svc()), config(moved)) == ConfigDiff(updated=("qwen",))


def test_added_and_removed_services() -> None:
    a, b, c = (svc(n, port=p, served_name=n) for n, p in (("a", 1), ("b", 2), ("c", 3)))
    diff = diff_configs(config(a, b), config(b, c))
    assert diff == ConfigDiff(added=("c",), removed=("a",))
    assert diff.to_json() == {
        "started": ["c"], "stopped": ["a"], "restarted": [], "updated": [], "policy": [],
    }  # fmt: skip


def test_rename_is_a_stop_and_a_start() -> None:
    diff = diff_configs(config(svc("old")), config(svc("new")))
    assert (diff.added, diff.removed) == (("new",), ("old",))


POLICY = [
    ("keep_alive rule", {"keep_alive": {"rules": [{"match": "x*", "keep_alive": "5m"}]}},
     ("keep_alive",)),
    ("mode", {"keep_alive": {"mode": "floor"}}, ("keep_alive",)),
    ("pin", {"pin": ["gpt-oss:120b"]}, ("pin",)),
    ("focus and pressure", {"focus": ["a"], "pressure": {"warning": 0.5}}, ("focus", "pressure")),
    ("ollama options", {"ollama_options": {"num_ctx": 4096}}, ("ollama_options",)),
]  # fmt: skip


@pytest.mark.parametrize(("what", "policy", "sections"), POLICY, ids=[p[0] for p in POLICY])
def test_policy_changes_restart_nothing(
    what: str, policy: dict[str, Any], sections: tuple[str, ...]
) -> None:
    diff = diff_configs(config(svc()), config(svc(), **policy))
    assert diff == ConfigDiff(policy=sections)
    assert diff.policy_changed and not diff.empty
    assert diff.to_json()["policy"] == list(sections)  # a list: renderers join names


def test_identical_configs_are_empty() -> None:
    diff = diff_configs(config(svc(), pin=["m"]), config(svc(), pin=["m"]))
    assert diff.empty and not diff.policy_changed


def test_rollback_keeps_the_good_spec_while_the_file_still_says_the_bad_one() -> None:
    good, bad = svc(), svc(args={"max-model-len": 999999})
    other, other_edited = svc("b", port=2, served_name="b"), svc("b", port=3, served_name="b")
    pinned, over = keep_rollbacks(config(bad, other_edited), {"qwen": (bad, good)})
    assert pinned.services["qwen"] == good and over == []
    assert diff_configs(config(good, other), pinned) == ConfigDiff(restarted=("b",))


@pytest.mark.parametrize(
    ("file_spec", "expect_restart"),
    [(svc(args={"max-model-len": 4096}), True), (svc(), False)],
    ids=["edited again", "reverted to the good spec"],
)
def test_rollback_ends_when_the_file_entry_changes(
    file_spec: ServiceConfig, expect_restart: bool
) -> None:
    good, bad = svc(), svc(args={"max-model-len": 999999})
    pinned, over = keep_rollbacks(config(file_spec), {"qwen": (bad, good)})
    assert over == ["qwen"]
    assert (diff_configs(config(good), pinned).restarted == ("qwen",)) is expect_restart


def test_rollback_of_a_removed_service_ends() -> None:
    good, bad = svc(), svc(args={"max-model-len": 999999})
    pinned, over = keep_rollbacks(config(), {"qwen": (bad, good)})
    assert over == ["qwen"] and "qwen" not in pinned.services


WATCHED = [
    ("gpu0.yaml", True), ("policy.yml", True), ("..data", True),
    ("gpu0.yaml~", False), (".gpu0.yaml.swp", False), ("gpu0.yaml.swp", False),
    (".gpu0.yaml.swx", False), ("4913", False), (".gpu0.yaml.tmp123", False),
    ("gpu0.yaml.bak", False), ("notes.txt", False), ("gpu0.json", False),
    (".#gpu0.yaml", False), ("gpu0.yaml.tmp", False),
]  # fmt: skip


@pytest.mark.parametrize(("name", "watched"), WATCHED, ids=[w[0] for w in WATCHED])
def test_watcher_filter(name: str, watched: bool) -> None:
    for change in Change:
        assert relevant(change, f"/etc/llm-supervisor/{name}") is watched
