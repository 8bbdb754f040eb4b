"""Serving the control API: a Unix socket (mode 0660) by default, or loopback TCP with a token.

The daemon owns the process's signals, so uvicorn must not install its own handlers: the
Server subclass below turns ``capture_signals`` into a no-op (uvicorn >= 0.29 installs them
there, in ``serve()``). We bind the sockets ourselves and hand them to uvicorn, so bind
errors surface as typed errors instead of uvicorn's ``sys.exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import socket
import stat
from collections.abc import Generator, Sequence
from pathlib import Path

import uvicorn
from prometheus_client.registry import Collector

from ..errors import ControlAddressError, ControlError
from ..logsetup import get_logger
from .address import is_loopback, parse_address, read_token
from .api import create_app
from .backend import ControlBackend

log = get_logger("llm_supervisor.control")

SOCKET_MODE = 0o660
GRACEFUL_SHUTDOWN_S = 3.0


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a dead daemon; refuse to clobber a live one or a regular file."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket; remove it or pick another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise ControlError(f"another daemon is already listening on unix:{path}")


def bind_unix(path: Path, socket_group: str | None) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, SOCKET_MODE)
        if socket_group:
            os.chown(path, -1, grp.getgrnam(socket_group).gr_gid)
    except KeyError:
        sock.close()
        raise ControlError(f"socket group {socket_group!r} does not exist") from None
    except OSError as exc:
        sock.close()
        raise ControlError(f"cannot bind control socket unix:{path}: {exc.strerror}") from None
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ControlError(f"cannot bind control API on {host}:{port}: {exc.strerror}") from None
    return sock


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers or its 10 Hz tick, with an event for "listening".

    uvicorn's main loop wakes every 0.1 s to see whether it should exit (and to refresh a
    Date header, which this server does not send); the control API is idle nearly always,
    so the loop waits for the exit itself: ``should_exit = True`` sets an event.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        self._exit = asyncio.Event()
        super().__init__(config)
        self.listening = asyncio.Event()

    @property
    def should_exit(self) -> bool:
        return self._exit.is_set()

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        if value:
            self._exit.set()
        else:
            self._exit.clear()

    async def main_loop(self) -> None:
        if not await self.on_tick(0):  # what a tick does once: headers, the exit check
            await self._exit.wait()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the daemon owns SIGTERM/SIGINT/SIGHUP

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.listening.set()


class ControlServer:
    """The control API on one address. ``start()`` binds and serves in the background."""

    def __init__(
        self,
        backend: ControlBackend,
        address: str,
        *,
        token_file: Path | None = None,
        socket_group: str | None = None,
        collectors: Sequence[Collector] = (),
    ) -> None:
        self.address = address
        self._collectors = collectors
        self._backend = backend
        self._token = read_token(token_file)
        self._group = socket_group
        # ("unix", path) or (host, port)
        self._host, self._where = parse_address(address)
        if self._host != "unix" and not is_loopback(self._host) and not self._token:
            raise ControlAddressError(
                f"refusing to serve the control API on non-loopback {address} without a token; "
                "pass a token file or use a Unix socket"
            )
        self._closing = asyncio.Event()
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket_id: tuple[int, int] | None = None

    @property
    def port(self) -> int | None:
        """The bound TCP port (useful with port 0), None for a Unix socket."""
        if self._server is None or self._host == "unix":
            return None
        port: int = self._server.servers[0].sockets[0].getsockname()[1]
        return port

    def _bind(self) -> socket.socket:
        if self._host == "unix":
            path = Path(str(self._where))
            sock = bind_unix(path, self._group)
            st = path.stat()
            self._socket_id = (st.st_dev, st.st_ino)
            return sock
        return bind_tcp(self._host, int(self._where))

    async def start(self, sock: socket.socket | None = None) -> None:
        """Serve on ``sock`` (owned by the caller, who also removes its file), else bind.

        A given socket is served through a duplicate: shutting down stops accepting and
        leaves the caller's socket listening (an upgrade in place hands it to the next
        program)."""
        sock = sock.dup() if sock is not None else self._bind()
        app = create_app(
            self._backend, token=self._token, closing=self._closing, collectors=self._collectors
        )
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            date_header=False,  # it would go stale: nothing ticks to refresh it
            timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
        )
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        listening = asyncio.ensure_future(self._server.listening.wait())
        await asyncio.wait([listening, self._task], return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        if self._task.done():
            self._task.result()  # startup failed: raise why
        log.info("control.listening", address=self.address)

    async def wait_closed(self) -> None:
        """Return when uvicorn has stopped (after ``shutdown()`` or on its own)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def shutdown(self) -> None:
        """Stop accepting, end follow streams, wait for uvicorn, remove our socket file."""
        self._closing.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._unlink_socket()
        log.info("control.stopped", address=self.address)

    def _unlink_socket(self) -> None:
        if self._socket_id is None:
            return
        path = Path(str(self._where))
        with contextlib.suppress(OSError):
            st = path.stat()
            if (st.st_dev, st.st_ino) == self._socket_id:  # not a successor's socket
                path.unlink()
        self._socket_id = None


async def serve_control(
    backend: ControlBackend,
    address: str,
    *,
    token_file: Path | None = None,
    socket_group: str | None = None,
    started: asyncio.Event | None = None,
    collectors: Sequence[Collector] = (),
    sock: socket.socket | None = None,
) -> None:
    """Serve until cancelled (run it as a task; cancel it to stop). Raises ControlError /
    ControlAddressError before ``started`` is set when the address cannot be served."""
    server = ControlServer(
        backend, address, token_file=token_file, socket_group=socket_group, collectors=collectors
    )
    await server.start(sock)
    if started is not None:
        started.set()
    try:
        await server.wait_closed()
    finally:
        await asyncio.shield(server.shutdown())
