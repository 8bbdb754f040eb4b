"""Every shipped profile loads, alone and together, and documents every field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import BaseModel

from llm_supervisor.cli import main
from llm_supervisor.config.load import config_files, load_config
from llm_supervisor.config.models import (
    HealthSpec,
    KeepAlivePolicy,
    Policy,
    PressureSpec,
    ProfileFile,
    RestartSpec,
    ServiceSpec,
)

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles"
EXAMPLES = PROFILES / "examples"


def test_shipped_profiles_load_without_warnings() -> None:
    config, warnings = load_config(PROFILES)
    assert warnings == []
    assert sorted(config.services) == ["ollama", "qwen3-8b"]
    assert config.policy.pin == ("gpt-oss:120b",)
    assert config.services["ollama"].gpus == (1,)
    assert config.policy_source == str(PROFILES / "policy.yaml")


def test_shipped_profiles_fit_two_80gb_gpus() -> None:
    load_config(PROFILES, {0: 80 * 2**30, 1: 80 * 2**30})


def test_check_on_shipped_profiles_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config-dir", str(PROFILES)]) == 0
    # No warnings; at most the note that this machine has no GPU telemetry.
    assert [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("note:")] == []


@pytest.mark.parametrize("name", [p.name for p in config_files(PROFILES)])
def test_each_shipped_file_loads_on_its_own(name: str, tmp_path: Path) -> None:
    shutil.copy(PROFILES / name, tmp_path / name)
    if name.startswith("policy."):
        (tmp_path / "gpu0.yaml").write_text("gpu: 0\n")  # a policy needs a profile beside it
    load_config(tmp_path)  # policy references may warn here; errors may not


def _example_dirs() -> list[Path]:
    if not EXAMPLES.is_dir():
        return []
    dirs = [d for d in sorted(EXAMPLES.iterdir()) if d.is_dir() and config_files(d)]
    return dirs + ([EXAMPLES] if any(p.stem != "policy" for p in config_files(EXAMPLES)) else [])


@pytest.mark.parametrize("example", _example_dirs(), ids=lambda p: p.name)
def test_examples_load(example: Path, tmp_path: Path) -> None:
    if example != EXAMPLES:
        load_config(example)  # an example directory is meant to be used as a whole
    for path in config_files(example):  # each profile alone, with the example's policy if any
        if path.stem == "policy":
            continue
        single = tmp_path / path.stem
        single.mkdir()
        shutil.copy(path, single / path.name)
        if (example / "policy.yaml").exists():
            shutil.copy(example / "policy.yaml", single / "policy.yaml")
        load_config(single)


def test_every_field_is_shown_in_the_shipped_profiles() -> None:
    """The examples are the documentation operators read first; none may go missing."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in config_files(PROFILES))
    models: list[type[BaseModel]] = [
        ProfileFile, ServiceSpec, HealthSpec, RestartSpec, Policy, KeepAlivePolicy, PressureSpec,
    ]  # fmt: skip
    missing = [
        f"{model.__name__}.{name}"
        for model in models
        for name in model.model_fields
        if f"{name}:" not in text
    ]
    assert missing == []
