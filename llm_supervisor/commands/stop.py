"""``llm-supervisor stop NAME…``: stop services (returns once their processes are gone)."""

from __future__ import annotations

import argparse

from .start import add_service_arguments, run_action


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_service_arguments(parser, "accepted for symmetry: stop always waits for the processes")


def run(args: argparse.Namespace) -> int:
    return run_action(args, "stop")
