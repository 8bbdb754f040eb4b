"""A stand-in daemon: the real control server over a FakeControlBackend, for CLI tests.

    python fake_control_daemon.py ADDRESS [--token-file F] [--socket-group G]

Prints ``READY <port>`` (0 for a Unix socket) once listening, or ``ERROR <message>`` and exits
2. Reads commands from stdin, one per line, and answers each with ``OK``:
``line NAME TEXT…`` (publish a log line), ``state NAME STATE``, ``reject ERROR…`` (the next
reload is rejected with that error), ``followers NAME`` (answers ``OK <count>``).
Exits on stdin EOF or SIGTERM, removing its socket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from fake_control_backend import FakeControlBackend  # type: ignore[import-not-found]

from llm_supervisor.control.server import ControlServer
from llm_supervisor.errors import ControlError
from llm_supervisor.logsetup import configure_logging


def handle(backend: FakeControlBackend, command: str) -> str:
    verb, _, rest = command.partition(" ")
    if verb == "line":
        name, _, text = rest.partition(" ")
        backend.add_line(name, text)
    elif verb == "state":
        name, _, state = rest.partition(" ")
        backend.set_state(name, state)
    elif verb == "reject":
        backend.reject_next_reload(rest)
    elif verb == "followers":
        return f"OK {backend.follower_count(rest)}"
    return "OK"


async def read_commands(backend: FakeControlBackend) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        print(handle(backend, line.decode().rstrip("\n")), flush=True)


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--token-file", type=Path)
    parser.add_argument("--socket-group")
    args = parser.parse_args()
    configure_logging("json", stream=sys.stderr)  # stdout is the protocol with the test
    backend = FakeControlBackend()
    try:
        server = ControlServer(
            backend, args.address, token_file=args.token_file, socket_group=args.socket_group
        )
        await server.start()
    except ControlError as exc:
        print(f"ERROR {exc}", flush=True)
        return 2
    print(f"READY {server.port or 0}", flush=True)
    commands = asyncio.create_task(read_commands(backend))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, commands.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await commands
    await server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
