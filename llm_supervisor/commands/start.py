"""``llm-supervisor start NAME… [--wait]``: start services (clears fatal)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..control.address import add_control_arguments
from ..errors import ServiceError, StartFailedError

if TYPE_CHECKING:
    from ..control.client import ControlClient


def add_service_arguments(parser: argparse.ArgumentParser, wait_help: str) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME")
    parser.add_argument("--wait", action="store_true", help=wait_help)
    add_control_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_service_arguments(parser, "return once the service answers (or failed to start)")


def describe(exc: ServiceError) -> str:
    if isinstance(exc, StartFailedError) and (exc.cause != "unknown" or exc.hint):
        return f"{exc} [{exc.cause}]" + (f"\n  hint: {exc.hint}" if exc.hint else "")
    return str(exc)


def run_action(args: argparse.Namespace, action: str) -> int:
    """Apply ``action`` to every name, keep going past failures, then raise them together."""
    from ..control.client import client_from_args

    failures: list[ServiceError] = []
    with client_from_args(args) as client:
        for name in args.names:
            try:
                if args.wait and action != "stop":
                    _waited(args, action, name)
                else:
                    _one(client, action, name, args.wait)
            except ServiceError as exc:
                failures.append(exc)
    if len(failures) == 1 and not isinstance(failures[0], StartFailedError):
        raise failures[0]
    if failures:
        raise ServiceError("\n".join(describe(exc) for exc in failures))
    return 0


def _one(client: ControlClient, action: str, name: str, wait: bool) -> None:
    result = client.action(action, name, wait)
    print(f"{name}: {action} requested; state {result.get('state') or 'unknown'}")


def _waited(args: argparse.Namespace, action: str, name: str) -> None:
    """Show the load phases while waiting (startwait.py)."""
    from ..control.client import client_from_args
    from .startwait import wait_action

    result = wait_action(lambda: client_from_args(args), action, name)
    print(f"{name}: {action} requested; state {result.get('state') or 'unknown'}")


def run(args: argparse.Namespace) -> int:
    return run_action(args, "start")
