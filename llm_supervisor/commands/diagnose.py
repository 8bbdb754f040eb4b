"""``llm-supervisor diagnose [FILE|-]``: classify an engine log like the daemon does on a crash.

Exit status, like grep's: 0 a cause was found, 1 nothing known matched (cause ``unknown``),
2 usage errors and unreadable files (argparse's own status).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from ..diagnosis import Diagnosis


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        nargs="?",
        default="-",
        type=argparse.FileType("rb"),
        metavar="FILE",
        help="engine log to classify; '-' or nothing reads standard input",
    )
    parser.add_argument(
        "--engine", choices=["vllm", "ollama"], help="only try this engine's messages"
    )
    parser.add_argument("--json", action="store_true", help="print {cause, hint, line, numbers}")
    parser.add_argument(
        "--tail-bytes",
        type=int,
        default=None,
        metavar="N",
        help="classify only the last N bytes (default: as much as the daemon reads; 0: all)",
    )


def run(args: argparse.Namespace) -> int:
    from ..diagnosis import TAIL_BYTES, diagnose

    limit = TAIL_BYTES if args.tail_bytes is None else args.tail_bytes
    with args.file as stream:
        text = _read_tail(stream, limit)
    result = diagnose(text, args.engine)
    if args.json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    else:
        print(_human(result))
    return 0 if result.known else 1


def _read_tail(stream: BinaryIO, limit: int) -> str:
    """The last ``limit`` bytes: a crash's cause sits near the end of a long log."""
    if limit > 0 and stream.seekable():
        stream.seek(0, 2)
        stream.seek(max(0, stream.tell() - limit))
        data = stream.read()
    else:
        data = stream.read()
        data = data[-limit:] if limit > 0 else data
    return data.decode("utf-8", errors="replace")


def _human(result: Diagnosis) -> str:
    lines = [f"cause: {result.cause}", f"hint:  {result.hint}"]
    if result.line:
        lines.append(f"line:  {result.line}")
    if result.numbers:
        lines.append("numbers: " + " ".join(f"{k}={v}" for k, v in result.numbers.items()))
    return "\n".join(lines)
