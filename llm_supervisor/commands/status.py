"""``llm-supervisor status [NAME…] [--json]``: services, GPUs, models and the last reload.

Exit 0 when every (selected) service is ready or resting on demand, 3 when some are not,
69 when the daemon cannot be reached (raised by the client, mapped in cli.py).
"""

from __future__ import annotations

import argparse

from ..control.address import add_control_arguments
from .defaults import EX_NOT_READY


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these services")
    parser.add_argument("--json", action="store_true", help="the status document as JSON")
    add_control_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    import time

    from ..control.client import client_from_args
    from ..control.render import is_ok, render_status, select_services, use_color

    with client_from_args(args) as client:
        status = client.status()
    services = select_services(status, args.names)
    if args.json:
        print(json.dumps({**status, "services": services}, indent=2))
    else:
        print(render_status(status, args.names, time.time(), use_color(sys.stdout)))
    return 0 if all(is_ok(svc) for svc in services.values()) else EX_NOT_READY
