"""``llm-supervisor check``: validate the config directory, print every problem at once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config.load import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import default_config_dir

    parser.add_argument("--config-dir", type=Path, default=Path(default_config_dir()))


def run(args: argparse.Namespace) -> int:
    config, warnings = load_config(args.config_dir)
    for issue in warnings:
        print(f"warning: {issue.format()}", file=sys.stderr)
    count = len(config.services)
    print(f"{args.config_dir}: ok ({count} service{'s' if count != 1 else ''})")
    return 0
