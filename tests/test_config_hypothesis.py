"""Random input to the loader: it returns a Config or raises ConfigError, nothing else.

Two kinds of input: arbitrary YAML-able structures (mostly rejected early), and
profile/policy-shaped documents built from the real field names with random values, so
that the validators, the message formatting and the cross-file checks all get exercised.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_supervisor.config.load import load_config
from llm_supervisor.config.messages import model_at
from llm_supervisor.config.models import (
    Config,
    KeepAlivePolicy,
    KeepAliveRule,
    Policy,
    ProfileFile,
    ServiceSpec,
)
from llm_supervisor.errors import ConfigError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["30s", "1h30m", "forever", "off", "0", "-1", "GPU-abc", "cpu", "24GiB"]),
)
yamlable = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


durations = st.sampled_from(["30s", "10m", "1h30m", "forever", 0, 5, "-1"])
# Values that are valid for a field often enough that whole configs validate now and then.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "engine": st.sampled_from(["vllm", "ollama", "command"]),
    "port": st.integers(min_value=1, max_value=65535),
    "model": st.sampled_from(["Qwen/Qwen3-8B-AWQ", "m"]),
    "models": st.lists(st.sampled_from(["gpt-oss:120b", "llama3.2:3b", "x"]), max_size=2),
    "command": st.lists(st.sampled_from(["/bin/srv", "--flag"]), min_size=1, max_size=2),
    "args": st.dictionaries(st.sampled_from(["max-model-len", "gpu-memory-utilization", "x"]),
                            st.integers(0, 4096) | st.floats(0, 1) | st.booleans()),
    "start": st.sampled_from(["boot", "on-demand"]),
    "vram": st.sampled_from(["24GiB", 1000, "1.5TB"]),
    "mode": st.sampled_from(["enforce", "floor", "observe"]),
    "client_unload": st.sampled_from(["deny", "allow"]),
    "match": st.sampled_from(["*", "gpt-oss:*", "x"]),
    "pin": st.lists(st.sampled_from(["gpt-oss:120b", "x"]), max_size=2),
    "warning": st.floats(0, 1), "critical": st.floats(0, 1),
    "served_name": st.sampled_from(["s", "gpt-oss:120b"]), "ready_path": st.just("/health"),
    "env": st.dictionaries(st.sampled_from(["A", "B"]), st.text(max_size=5) | st.integers()),
    "ollama_options": st.dictionaries(st.sampled_from(["num_ctx", "x"]), scalars),
    "focus": st.lists(st.sampled_from(["gpt-oss:120b", "x"]), max_size=2),
    "failures": st.integers(1, 5), "max_failures": st.integers(1, 5),
    "evict_idle": st.booleans(), "backoff_max": durations,
    **{name: durations for name in ["default", "keep_alive", "interval", "timeout",
       "startup_timeout", "stable_after", "window", "stop_timeout", "backoff_initial"]},
}  # fmt: skip


def shaped(model: Any) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings that use the model's real keys (plus a misspelt one) with random values."""
    values: dict[str, st.SearchStrategy[Any]] = {"prot": yamlable}
    for name in model.model_fields:
        plausible = PLAUSIBLE.get(name, yamlable)
        values[name] = st.one_of(plausible, plausible, plausible, yamlable)
        sub = model_at(model, (name,))  # HealthSpec for "health" ...
        if sub is not None:
            values[name] = shaped(sub) | yamlable
    if model is KeepAlivePolicy:
        values["rules"] = st.lists(shaped(KeepAliveRule) | yamlable, max_size=3)
    required = [name for name, f in model.model_fields.items() if f.is_required()]
    optional = st.lists(st.sampled_from(sorted(values)), unique=True, max_size=4)
    return optional.flatmap(
        lambda chosen: st.fixed_dictionaries({k: values[k] for k in {*required, *chosen}})
    )


valid_gpus = st.sampled_from([0, 1, "cpu", [0, 1], "GPU-1"])
gpus = st.one_of(valid_gpus, valid_gpus, valid_gpus, scalars, st.lists(scalars, max_size=3))
names = st.sampled_from(["a", "b", "qwen"]) | st.text(max_size=8)
profiles = st.fixed_dictionaries(
    {"gpu": gpus},
    optional={"services": st.dictionaries(names, shaped(ServiceSpec), max_size=3)},
)
policies = shaped(Policy)


def load(files: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, data in files.items():
            (root / name).write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        try:
            config, warnings = load_config(root, {0: 2**36, 1: 2**36})
        except ConfigError as exc:
            assert exc.issues, "a ConfigError must carry at least one error"
            for issue in exc.issues:
                assert issue.message
                assert issue.line >= 1 or issue.path == str(root)
            return
        assert isinstance(config, Config)
        assert all(w.severity == "warning" for w in warnings)


@SETTINGS
@given(yamlable)
def test_any_structure_as_a_profile(data: Any) -> None:
    load({"gpu0.yaml": data})


@SETTINGS
@given(yamlable, yamlable)
def test_any_structure_as_profile_and_policy(profile: Any, policy: Any) -> None:
    load({"gpu0.yaml": profile, "policy.yaml": policy})


@SETTINGS
@given(profiles, profiles, policies)
def test_profile_shaped_documents(gpu0: Any, gpu1: Any, policy: Any) -> None:
    load({"gpu0.yaml": gpu0, "gpu1.yaml": gpu1, "policy.yaml": policy})


@SETTINGS
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_any_text_or_bytes(content: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gpu0.yaml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", errors="surrogatepass")
        with contextlib.suppress(ConfigError):
            load_config(Path(tmp))


def test_shaped_strategy_reaches_valid_configs() -> None:
    """Guard against a strategy that only ever produces garbage."""
    valid = ProfileFile.model_validate(
        {"gpu": 0, "services": {"a": {"engine": "ollama", "port": 1}}}
    )
    assert valid.gpus == (0,)
