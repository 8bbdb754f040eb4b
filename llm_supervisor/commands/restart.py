"""``llm-supervisor restart NAME… [--wait]``: stop, then start again."""

from __future__ import annotations

import argparse

from .start import add_service_arguments, run_action


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_service_arguments(parser, "return once the service answers again")


def run(args: argparse.Namespace) -> int:
    return run_action(args, "restart")
