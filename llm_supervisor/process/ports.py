"""Who holds a TCP port, so a start can fail with a useful message instead of a crash loop."""

from __future__ import annotations

import socket

import psutil

from ..config.secrets import redact_argv


def port_owner(port: int, host: str = "127.0.0.1") -> str | None:
    """None when ``host:port`` can be bound; else a description of who holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return None
        except OSError:
            pass
    return _describe_listener(port) or "an unknown process (not visible to this user)"


def _describe_listener(port: int) -> str | None:
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for conn in conns:
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            if conn.pid is None:
                return "an unknown process (not visible to this user)"
            try:
                proc = psutil.Process(conn.pid)
                cmd = " ".join(redact_argv(proc.cmdline()))[:120] or proc.name()
            except psutil.Error:
                cmd = "?"
            return f"pid {conn.pid} ({cmd})"
    return None
