"""Where the control API lives: address parsing, the default socket path, the token file.

Kept free of server and client imports: every CLI command parses its arguments with it.
"""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

from ..errors import ControlAddressError, ControlError

SYSTEM_SOCKET = Path("/run/llm-supervisor/control.sock")


def default_control_address(arg: str | None = None, *, client: bool = False) -> str:
    """``--control``, else $LLM_SUPERVISOR_CONTROL, else the default socket (DESIGN.md).

    ``client``: an operator (not root) in the socket's group asking the system daemon has
    no per-user socket; when that one does not exist but the system one does, use it.
    """
    if client and os.geteuid() != 0 and not arg and not os.environ.get("LLM_SUPERVISOR_CONTROL"):
        personal = default_control_address()
        if not Path(personal.removeprefix("unix:")).exists() and SYSTEM_SOCKET.exists():
            return f"unix:{SYSTEM_SOCKET}"
    if arg:
        return arg
    env = os.environ
    if env.get("LLM_SUPERVISOR_CONTROL"):
        return env["LLM_SUPERVISOR_CONTROL"]
    if env.get("RUNTIME_DIRECTORY"):  # systemd RuntimeDirectory=, may list several
        return f"unix:{env['RUNTIME_DIRECTORY'].split(':')[0]}/control.sock"
    if os.geteuid() == 0:
        return f"unix:{SYSTEM_SOCKET}"
    if env.get("XDG_RUNTIME_DIR"):
        return f"unix:{env['XDG_RUNTIME_DIR']}/llm-supervisor/control.sock"
    return f"unix:/tmp/llm-supervisor-{os.getuid()}/control.sock"


def parse_address(address: str) -> tuple[str, str | int]:
    """``unix:/path`` -> ("unix", path); ``HOST:PORT`` / ``[::1]:PORT`` -> (host, port)."""
    if address.startswith("unix:"):
        path = address[len("unix:") :]
        if not path:
            raise ControlAddressError("control address unix: needs a path")
        return "unix", path
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ControlAddressError(
            f"control address {address!r}: expected unix:/path/to.sock or HOST:PORT"
        )
    return host.strip("[]") or "127.0.0.1", int(port)


def read_token(token_file: Path | None) -> str | None:
    if token_file is None:
        return None
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise ControlError(f"cannot read token file {token_file}: {exc.strerror}") from None
    if not token:
        raise ControlError(f"token file {token_file} is empty")
    return token


def untrusted_socket_dir(directory: Path, euid: int | None = None) -> str | None:
    """Why a non-root user must not trust the socket's directory, or None.

    ``/tmp/llm-supervisor-$UID`` can be created by anyone before we get there; whoever owns
    it can put a socket of their own in it and read every command (and token) we send.
    Root (and a root-owned directory such as /run/llm-supervisor) is trusted.
    """
    euid = os.geteuid() if euid is None else euid
    try:
        info = directory.stat()
    except OSError:
        return None  # not there: connecting fails with its own message
    if euid == 0 or info.st_uid == 0:
        return None
    if info.st_uid != euid:
        return f"{directory} is owned by uid {info.st_uid}, not by you (uid {euid}); refusing it"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{directory} is writable by others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def ensure_socket_dir(directory: Path, euid: int | None = None) -> None:
    """Create the socket's directory (0700 for a non-root daemon) or refuse a foreign one."""
    euid = os.geteuid() if euid is None else euid
    if not directory.exists():
        try:
            directory.mkdir(parents=True, mode=0o755 if euid == 0 else 0o700)
        except FileExistsError:
            pass  # created meanwhile: judged below like any existing one
        except OSError as exc:
            raise ControlError(f"cannot create {directory}: {exc.strerror}") from None
    reason = untrusted_socket_dir(directory, euid)
    if reason:
        raise ControlError(f"control socket directory: {reason}")


def server_token(address: str, token_file: Path | None) -> str | None:
    """The token the control API on ``address`` requires (read from ``token_file``).

    TCP always needs one, loopback included: any web page in the operator's browser can
    reach 127.0.0.1, and other local users can too. The Unix socket's file mode is its
    access control, so it needs none (one given is still required there).
    """
    host, _ = parse_address(address)
    token = read_token(token_file)
    if host != "unix" and token is None:
        raise ControlAddressError(
            f"the control API on TCP ({address}) needs a bearer token: pass --token-file FILE "
            "(a file holding a random secret), or serve it on a Unix socket (unix:PATH)"
        )
    return token


def add_control_arguments(parser: argparse.ArgumentParser) -> None:
    """``--control`` and ``--token-file``, shared by every command that talks to the daemon."""
    parser.add_argument(
        "--control",
        metavar="unix:PATH|HOST:PORT",
        help="control API address (default: $LLM_SUPERVISOR_CONTROL, else the default socket)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help="bearer token for a TCP control API (default: $LLM_SUPERVISOR_TOKEN_FILE)",
    )
