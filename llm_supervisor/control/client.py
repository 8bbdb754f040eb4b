"""The CLI's side of the control API: HTTP over the Unix socket, or TCP with a bearer token.

Every failure becomes a typed error with one readable line; ``cli.py`` prints it.

Stdlib ``http.client``, not httpx (which DESIGN.md first named here): every CLI call pays
for its imports, and importing httpx alone cost 75-90 ms of CPU on the development machine,
over half of the 150 ms that ``llm-supervisor status`` may take in all; http.client, json
and socket cost under 20 ms. The client needs one request at a time, a Unix socket and a
line-by-line stream, which http.client does in a few lines; and the package needs no second
HTTP stack besides aiohttp (server, probes, the gateway's upstream).
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import re
import socket
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from ..errors import (
    AdmissionError,
    ConfigError,
    ConfigIssue,
    ControlAuthError,
    ControlError,
    DaemonUnreachableError,
    PortInUseError,
    ServiceError,
    StartFailedError,
    UnknownServiceError,
    UpgradeError,
)
from .address import default_control_address, parse_address, read_token, untrusted_socket_dir
from .backend import LogLine

# status/stop answer fast; start --wait can take minutes (vLLM loads), so no read timeout.
CONNECT_TIMEOUT_S = 5.0
_WHY = {
    errno.ENOENT: "no socket there",
    errno.ECONNREFUSED: "connection refused",
    errno.EACCES: "permission denied (is your user in the socket's group?)",
    errno.EPERM: "permission denied (is your user in the socket's group?)",
}
_LOCATED = re.compile(r"^(?P<path>[^:\s]+):(?P<line>\d+):(?P<col>\d+): (?P<message>.*)$", re.S)


def _root_oserror(exc: BaseException) -> OSError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def unreachable(address: str, exc: BaseException) -> DaemonUnreachableError:
    os_error = _root_oserror(exc)
    if os_error is not None:
        why = _WHY.get(os_error.errno or 0, os_error.strerror or str(os_error))
    else:
        why = str(exc) or type(exc).__name__
    return DaemonUnreachableError(
        f"daemon not reachable at {address}: {why}; "
        "is it running? (systemctl status llm-supervisor)"
    )


def config_error(errors: list[str]) -> ConfigError:
    """The daemon's compiler-style error strings back into ConfigIssues for cli.py."""
    issues = []
    for text in errors or ["config rejected"]:
        m = _LOCATED.match(text)
        if m:
            line, col = int(m["line"]), int(m["col"])
            issues.append(ConfigIssue(m["path"], line, col, "", m["message"]))
        else:
            path, _, message = text.partition(": ")
            issues.append(ConfigIssue(path, 0, 0, "", message) if message else _bare(text))
    return ConfigError(issues)


def _bare(text: str) -> ConfigIssue:
    return ConfigIssue("config", 0, 0, "", text)


def api_error(status: int, body: bytes) -> Exception:
    """Turn the API's ``{"error": {...}}`` body into the typed error it was made from."""
    try:
        err: dict[str, Any] = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        text = body[:200].decode("utf-8", "replace")
        return ControlError(f"control API answered {status}: {text}")
    kind, message = err.get("type"), str(err.get("message", ""))
    if kind == "unauthorized":
        return ControlAuthError(f"{message}; pass --token-file or set LLM_SUPERVISOR_TOKEN_FILE")
    if kind == "unknown_service":
        return UnknownServiceError(str(err.get("service", "")))
    failed = {"start_failed": StartFailedError, "admission": AdmissionError}
    failed["port_in_use"] = PortInUseError
    if kind in failed:
        args = (str(err.get("service", "")), str(err.get("reason", message)))
        return failed[kind](*args, str(err.get("cause", "unknown")), str(err.get("hint", "")))
    if kind == "service_error":
        return ServiceError(message)
    if kind == "upgrade_failed":
        return UpgradeError(message)
    return ControlError(message)


class _Connection(http.client.HTTPConnection):
    """One HTTP connection, over a Unix socket when ``unix_path`` is given. Only connecting
    times out: ``start --wait`` may wait minutes for its answer, ``logs -f`` for hours."""

    def __init__(self, host: str, port: int | None, unix_path: str | None) -> None:
        super().__init__(host, port, timeout=CONNECT_TIMEOUT_S)
        self._unix_path = unix_path

    def connect(self) -> None:
        if self._unix_path is None:
            super().connect()
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self._unix_path)
            except OSError:
                sock.close()
                raise
            self.sock = sock
        self.sock.settimeout(None)


class ControlClient:
    """Synchronous client; one instance per CLI invocation, one connection per request."""

    def __init__(self, address: str | None = None, token_file: Path | None = None) -> None:
        self.address = default_control_address(address, client=True)
        host, where = parse_address(self.address)
        env_token = os.environ.get("LLM_SUPERVISOR_TOKEN_FILE")
        token = read_token(token_file or (Path(env_token) if env_token else None))
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        if host == "unix":  # a single-label Host: the API takes it as a local name
            if reason := untrusted_socket_dir(Path(str(where)).parent):
                raise ControlError(f"not connecting to unix:{where}: {reason}")
            self._target: tuple[str, int | None, str | None] = ("llm-supervisor", None, str(where))
        else:
            self._target = (host, int(where), None)

    def close(self) -> None:
        """Nothing stays open between requests; kept for ``with``."""

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _send(
        self, conn: _Connection, method: str, path: str, params: dict[str, Any]
    ) -> http.client.HTTPResponse:
        """Send a request, get the answer's head; errors (the API's too) are raised."""
        query = urlencode({k: v for k, v in params.items() if v is not None})
        try:
            conn.request(method, f"{path}?{query}" if query else path, headers=self._headers)
            response = conn.getresponse()
            if response.status >= 400:
                raise api_error(response.status, response.read())
        except (OSError, http.client.HTTPException) as exc:
            raise unreachable(self.address, exc) from None
        return response

    def _request(self, method: str, path: str, **params: Any) -> bytes:
        conn = _Connection(*self._target)
        try:
            response = self._send(conn, method, path, params)
            try:
                return response.read()
            except (OSError, http.client.HTTPException) as exc:
                raise unreachable(self.address, exc) from None
        finally:
            conn.close()

    def _json(self, method: str, path: str, **params: Any) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self._request(method, path, **params))
        return data

    def status(self) -> dict[str, Any]:
        return self._json("GET", "/v1/status")

    def gpus(self) -> dict[str, Any]:
        return self._json("GET", "/v1/gpus")

    def action(self, action: str, name: str, wait: bool = False) -> dict[str, Any]:
        """``action`` is start, stop or restart."""
        path = f"/v1/services/{quote(name, safe='')}/{action}"
        return self._json("POST", path, wait=1 if wait else None)

    def reload(self, wait: bool = False, dry_run: bool = False) -> dict[str, Any]:
        params = {"wait": 1 if wait else None, "dry_run": 1 if dry_run else None}
        return self._json("POST", "/v1/reload", **params)

    def upgrade(self) -> dict[str, Any]:
        return self._json("POST", "/v1/upgrade")

    def log_tail(self, name: str, lines: int | str, since: float | None) -> list[LogLine]:
        path = f"/v1/services/{quote(name, safe='')}/logs"
        body = self._request("GET", path, lines=lines, since=since).decode()
        return [_decode(raw) for raw in body.splitlines() if raw.strip()]

    def follow_logs(self, name: str, lines: int | str, since: float | None) -> Iterator[LogLine]:
        """The tail, then new lines until the daemon ends the stream."""
        path = f"/v1/services/{quote(name, safe='')}/logs"
        conn = _Connection(*self._target)
        try:
            params = {"lines": lines, "follow": 1, "since": since}
            response = self._send(conn, "GET", path, params)
            while raw := self._readline(response):
                if raw.strip():
                    yield _decode(raw.decode())
        finally:
            conn.close()

    def _readline(self, response: http.client.HTTPResponse) -> bytes:
        try:
            return response.readline()
        except (OSError, http.client.HTTPException) as exc:
            raise unreachable(self.address, exc) from None


def _decode(raw: str) -> LogLine:
    return LogLine.from_json(json.loads(raw))


def client_from_args(args: Namespace) -> ControlClient:
    return ControlClient(args.control, args.token_file)
