"""The daemon's listening sockets, bound once and kept across an in-place upgrade.

The daemon, not the servers, owns them: the gateway and the control API serve on duplicates,
so stopping a server before an upgrade stops accepting without closing the socket. The kernel
keeps completing connections into the backlog while the new program starts, and the new
daemon accepts them: clients see a pause, never a refused connection (nginx does the same
with its NGINX variable).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from ..control.address import parse_address
from ..control.server import bind_tcp, bind_unix
from ..errors import ListenError
from ..logsetup import get_logger

log = get_logger(__name__)

LISTEN_FDS_ENV = "LLM_SUPERVISOR_LISTEN_FDS"  # "gateway=5,control=6" across exec
BACKLOG = 1024  # connections that may wait while the next program starts


def take_inherited(environ: MutableMapping[str, str]) -> dict[str, socket.socket]:
    """The sockets a previous program of this daemon handed over (and the variable removed,
    so engines never see it)."""
    spec = environ.pop(LISTEN_FDS_ENV, "")
    found = {}
    for item in filter(None, spec.split(",")):
        name, _, fd = item.partition("=")
        with contextlib.suppress(ValueError, OSError):
            sock = socket.socket(fileno=int(fd))
            sock.set_inheritable(False)
            found[name] = sock
    return found


class Listeners:
    def __init__(self, inherited: Mapping[str, socket.socket] | None = None) -> None:
        self.sockets: dict[str, socket.socket] = dict(inherited or {})
        self._unix_path: tuple[Path, int, int] | None = None

    @property
    def inherited(self) -> bool:
        return bool(self.sockets)

    def control(self, address: str, socket_group: str | None) -> socket.socket:
        """The control API's socket: the inherited one, else freshly bound."""
        host, where = parse_address(address)
        sock = self.sockets.get("control")
        if sock is None:
            if host == "unix":
                sock = bind_unix(Path(str(where)), socket_group)
            else:
                sock = bind_tcp(host, int(where))
            sock.listen(BACKLOG)
            self.sockets["control"] = sock
        if host == "unix":
            with contextlib.suppress(OSError):
                st = Path(str(where)).stat()
                self._unix_path = (Path(str(where)), st.st_dev, st.st_ino)
        return sock

    def gateway(self, host: str, port: int) -> socket.socket:
        sock = self.sockets.get("gateway")
        if sock is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
                sock.listen(BACKLOG)
            except OSError as exc:
                sock.close()
                raise ListenError(
                    f"cannot listen on gateway {host}:{port}: {exc.strerror}"
                ) from None
            self.sockets["gateway"] = sock
        return sock

    def hand_over(self, environ: MutableMapping[str, str]) -> None:
        """Make every socket survive exec and tell the next program where they are."""
        for sock in self.sockets.values():
            sock.set_inheritable(True)
        environ[LISTEN_FDS_ENV] = ",".join(f"{n}={s.fileno()}" for n, s in self.sockets.items())

    def close(self) -> None:
        """Close for good (daemon shutdown): also remove our control socket file."""
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
        if self._unix_path is not None:
            path, dev, ino = self._unix_path
            with contextlib.suppress(OSError):
                st = path.stat()
                if (st.st_dev, st.st_ino) == (dev, ino):  # not a successor's socket
                    os.unlink(path)
            self._unix_path = None
