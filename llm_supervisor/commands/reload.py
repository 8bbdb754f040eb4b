"""``llm-supervisor reload [--wait] [--dry-run]``: re-read the config dir, apply what changed.

A rejected config exits 78 with every error (ConfigError, mapped in cli.py).
"""

from __future__ import annotations

import argparse

from ..control.address import add_control_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="return once changes are applied")
    parser.add_argument("--dry-run", action="store_true", help="validate and show the diff only")
    add_control_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..control.client import client_from_args, config_error
    from ..control.render import render_reload_result

    with client_from_args(args) as client:
        result = client.reload(wait=args.wait, dry_run=args.dry_run)
    if result.get("result") == "rejected":
        raise config_error(list(result.get("errors") or []))
    print("\n".join(render_reload_result(result, args.dry_run)))
    return 0
