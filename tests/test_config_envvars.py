"""``${NAME}`` in config strings: expanded from the environment, errors with file:line:col."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llm_supervisor.cli import EX_CONFIG, main
from llm_supervisor.config.envvars import expand, expand_tree
from llm_supervisor.config.load import load_config
from llm_supervisor.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "profiles" / "examples" / "cpu-vllm"

PROFILE = """\
gpu: cpu
services:
  tiny:
    engine: vllm
    command: ["${VENV}/bin/python", -m, vllm.entrypoints.openai.api_server]
    model: ${HOME}/models/tiny
    port: 8011
    env: {HF_HOME: "${HF_HOME:-/srv/hf}", PRICE: "5$$", N: 3}
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("${A}/x", "/a/x"),
        ("${A}${A}", "/a/a"),
        ("$$A", "$A"),
        ("$${A}", "${A}"),
        ("${EMPTY}", ""),
        ("${EMPTY:-fb}", "fb"),
        ("${UNSET:-/opt/fb}", "/opt/fb"),
        ("${A:-fb}", "/a"),
        ("${UNSET:-}", ""),
    ],
)
def test_expand(text: str, expected: str) -> None:
    assert expand(text, {"A": "/a", "EMPTY": ""}) == (expected, None)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("${UNSET}", "environment variable UNSET is not set; set it or write ${UNSET:-fallback}"),
        ("$A/x", "'$' not followed by {NAME} in '$A/x'"),
        ("5$", "'$' not followed by {NAME}"),
        ("${A", "'$' not followed by {NAME}"),
        ("${1A}", "'$' not followed by {NAME}"),
        ("${UNSET:-${A}}", "'$' not followed by {NAME}"),  # fallbacks do not nest
    ],
)
def test_expand_rejects(text: str, fragment: str) -> None:
    value, problem = expand(text, {"A": "/a"})
    assert value == text
    assert problem is not None and fragment in problem


def test_profile_strings_are_expanded_before_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", "/home/alice")
    monkeypatch.setenv("VENV", "/opt/vllm")
    monkeypatch.delenv("HF_HOME", raising=False)
    (tmp_path / "cpu.yaml").write_text(PROFILE)
    spec = load_config(tmp_path)[0].services["tiny"].spec
    assert spec.command is not None and spec.command[0] == "/opt/vllm/bin/python"
    assert spec.model == "/home/alice/models/tiny"
    assert dict(spec.env) == {"HF_HOME": "/srv/hf", "PRICE": "5$", "N": "3"}


def test_unset_variables_are_errors_with_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("VENV", raising=False)
    monkeypatch.delenv("HOME", raising=False)
    (tmp_path / "cpu.yaml").write_text(PROFILE)
    assert main(["check", "--config-dir", str(tmp_path)]) == EX_CONFIG
    err = capsys.readouterr().err
    path = tmp_path / "cpu.yaml"
    assert f"{path}:5:15: services.tiny.command.0: environment variable VENV is not set" in err
    assert f"{path}:6:5: services.tiny.model: environment variable HOME is not set" in err
    assert "2 error(s)" in err


def test_a_bare_dollar_is_an_error_not_a_literal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", "/home/alice")
    (tmp_path / "gpu0.yaml").write_text(
        "gpu: 0\nservices:\n  a: {engine: vllm, model: $HOME/m, port: 8001}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    [issue] = caught.value.issues
    assert (issue.line, issue.col, issue.key) == (3, 21, "services.a.model")
    assert "write ${NAME}" in issue.message


def test_only_string_values_are_expanded() -> None:
    data = {"${X}": ["${X}", 3, True, None, {"k": "$$"}]}
    assert expand_tree(data, {"X": "y"}) == ({"${X}": ["y", 3, True, None, {"k": "$"}]}, [])


def test_cpu_example_follows_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU example works for any user, not only root."""
    monkeypatch.setenv("HOME", "/home/alice")
    shutil.copytree(EXAMPLE, tmp_path / "cpu-vllm")
    spec = load_config(tmp_path / "cpu-vllm")[0].services["tiny"].spec
    venv = "/home/alice/.cache/llm-supervisor/vllm-cpu-venv"
    assert spec.command is not None and spec.command[0] == f"{venv}/bin/python"
    assert spec.model == "/home/alice/.cache/llm-supervisor/tiny-llama"
    assert "/root" not in (EXAMPLE / "cpu.yaml").read_text()
