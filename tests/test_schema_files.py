"""The committed JSON schemas are exactly what `llm-supervisor schema` generates.

When this fails after a model change, run `make schema` and commit schema/.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_supervisor.cli import main
from llm_supervisor.commands.schema import SCHEMAS, schema_json

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("which", sorted(SCHEMAS))
def test_committed_schema_is_current(which: str) -> None:
    committed = (ROOT / "schema" / f"{which}.schema.json").read_text(encoding="utf-8")
    assert committed == schema_json(which), "stale schema: run `make schema` and commit schema/"


def test_schema_command_prints_and_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", "policy"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert "keep_alive" in printed["properties"]
    assert main(["schema", "--write", str(tmp_path / "out")]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["policy.schema.json", "profile.schema.json"]
    profile = json.loads((tmp_path / "out" / "profile.schema.json").read_text())
    assert profile["additionalProperties"] is False
    assert profile["required"] == ["gpu"]


def test_profiles_reference_the_schemas() -> None:
    for path in sorted((ROOT / "profiles").glob("*.yaml")):
        which = "policy" if path.stem == "policy" else "profile"
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first == f"# yaml-language-server: $schema=../schema/{which}.schema.json", path
