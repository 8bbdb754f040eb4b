"""``llm-supervisor schema``: JSON schemas of profiles and policy for editors.

Profiles point at them with ``# yaml-language-server: $schema=../schema/profile.schema.json``;
``schema --write schema`` regenerates the committed copies (``make schema``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

# which -> title; the models are imported only when a schema is asked for (pydantic is slow
# to import, and every command's arguments are parsed with this module loaded)
SCHEMAS: dict[str, str] = {
    "profile": "llm-supervisor profile (one GPU or GPU set: gpu0.yaml ...)",
    "policy": "llm-supervisor policy.yaml (keep_alive rules, pins, focus, pressure)",
}


def _model(which: str) -> type[BaseModel]:
    from ..config.models import Policy, ProfileFile

    models: dict[str, type[BaseModel]] = {"profile": ProfileFile, "policy": Policy}
    return models[which]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "which", nargs="?", choices=sorted(SCHEMAS), default="profile",
        help="which schema to print (default: profile)",
    )  # fmt: skip
    parser.add_argument(
        "--write", metavar="DIR", type=Path,
        help="write profile.schema.json and policy.schema.json into DIR instead of printing",
    )  # fmt: skip


def schema_json(which: str) -> str:
    """The schema as committed: stable key order, trailing newline."""
    model, title = _model(which), SCHEMAS[which]
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **model.model_json_schema(),
        "title": title,
    }
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.write is None:
        print(schema_json(args.which), end="")
        return 0
    args.write.mkdir(parents=True, exist_ok=True)
    for which in sorted(SCHEMAS):
        target = args.write / f"{which}.schema.json"
        target.write_text(schema_json(which), encoding="utf-8")
        print(target)
    return 0
