"""``llm-supervisor schema``: JSON schema for editors (yaml-language-server)."""

from __future__ import annotations

import argparse
import json

from ..config.models import Policy, ProfileFile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("which", nargs="?", choices=["profile", "policy"], default="profile")


def run(args: argparse.Namespace) -> int:
    model = ProfileFile if args.which == "profile" else Policy
    print(json.dumps(model.model_json_schema(), indent=2))
    return 0
