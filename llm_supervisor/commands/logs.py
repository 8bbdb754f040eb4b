"""``llm-supervisor logs NAME [-f] [-n N] [--since 10m] [-t]``: like ``docker logs``.

stdout lines go to stdout, stderr lines to stderr; ``-f`` keeps following until Ctrl-C or
until the daemon ends the stream.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..control.address import add_control_arguments
from ..durations import parse_duration
from ..process.logline import LogLine


def _lines(value: str) -> int | str:
    if value == "all":
        return value
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of lines or 'all', got {value!r}")
    return int(value)


def _since(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    parser.add_argument(
        "-n", "--tail", type=_lines, default="all", metavar="N", help="last N lines (default all)"
    )
    parser.add_argument("--since", type=_since, metavar="DURATION", help="only lines newer (10m)")
    parser.add_argument("-t", "--timestamps", action="store_true", help="prefix each line's time")
    add_control_arguments(parser)


def _emit(line: LogLine, timestamps: bool) -> None:
    from ..control.render import render_log_line

    stream = sys.stderr if line.stream in ("stderr", "err") else sys.stdout
    print(render_log_line(line, timestamps), file=stream, flush=True)


def run(args: argparse.Namespace) -> int:
    from ..control.client import client_from_args

    try:
        with client_from_args(args) as client:
            if args.follow:
                for line in client.follow_logs(args.name, args.tail, args.since):
                    _emit(line, args.timestamps)
            else:
                for line in client.log_tail(args.name, args.tail, args.since):
                    _emit(line, args.timestamps)
    except BrokenPipeError:
        # `logs NAME | head`: the reader left; silence the interpreter's flush at exit too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
