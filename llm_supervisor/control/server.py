"""Serving the control API: a Unix socket (mode 0660) by default, or TCP with a token.

On aiohttp, like the gateway: one HTTP stack in the daemon. Nothing here ticks while idle
(aiohttp sets timers only for open connections), and the runner leaves the process's
signals to the daemon. We bind the sockets ourselves and hand them to aiohttp, so bind
errors surface as typed errors with the address in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import socket
import stat
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from prometheus_client.registry import Collector

from ..errors import ControlError
from ..logsetup import get_logger
from .address import ensure_socket_dir, parse_address, server_token
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
    ensure_socket_dir(path.parent)
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
        self._token = server_token(address, token_file)
        self._group = socket_group
        # ("unix", path) or (host, port)
        self._host, self._where = parse_address(address)
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._socket_id: tuple[int, int] | None = None

    @property
    def port(self) -> int | None:
        """The bound TCP port (useful with port 0), None for a Unix socket."""
        if self._runner is None or self._host == "unix":
            return None
        port: int = self._runner.addresses[0][1]
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
        # handler_cancellation: a client that hangs up ends its follow stream at once
        # (api.py shields the actions it asked for).
        runner = web.AppRunner(
            app,
            handle_signals=False,  # the daemon owns SIGTERM/SIGINT/SIGHUP
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=GRACEFUL_SHUTDOWN_S,
        )
        await runner.setup()
        try:
            # A large backlog: connections wait there while an upgrade execs the daemon.
            await web.SockSite(runner, sock, backlog=1024).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("control.listening", address=self.address)

    async def shutdown(self) -> None:
        """Stop accepting, end follow streams, let requests finish, remove our socket file."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
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
        await asyncio.Future()  # until cancelled
    finally:
        await asyncio.shield(server.shutdown())
