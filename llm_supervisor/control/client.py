"""The CLI's side of the control API: httpx over the Unix socket, or TCP with a bearer token.

Every failure becomes a typed error with one readable line; ``cli.py`` prints it.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

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
from .address import default_control_address, parse_address, read_token
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


def api_error(response: httpx.Response) -> Exception:
    """Turn the API's ``{"error": {...}}`` body into the typed error it was made from."""
    try:
        err: dict[str, Any] = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return ControlError(f"control API answered {response.status_code}: {response.text[:200]}")
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


class ControlClient:
    """Synchronous client; one instance per CLI invocation."""

    def __init__(self, address: str | None = None, token_file: Path | None = None) -> None:
        self.address = default_control_address(address, client=True)
        host, where = parse_address(self.address)
        env_token = os.environ.get("LLM_SUPERVISOR_TOKEN_FILE")
        token = read_token(token_file or (Path(env_token) if env_token else None))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT_S)
        if host == "unix":
            transport = httpx.HTTPTransport(uds=str(where))
            base = "http://llm-supervisor"
        else:
            transport = httpx.HTTPTransport()
            base = f"http://[{host}]:{where}" if ":" in host else f"http://{host}:{where}"
        self._http = httpx.Client(
            transport=transport, base_url=base, headers=headers, timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **params: Any) -> httpx.Response:
        query = {k: v for k, v in params.items() if v is not None}
        try:
            response = self._http.request(method, path, params=query)
        except httpx.TransportError as exc:
            raise unreachable(self.address, exc) from None
        if response.status_code >= 400:
            raise api_error(response)
        return response

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = self._request("GET", "/v1/status").json()
        return data

    def gpus(self) -> dict[str, Any]:
        data: dict[str, Any] = self._request("GET", "/v1/gpus").json()
        return data

    def action(self, action: str, name: str, wait: bool = False) -> dict[str, Any]:
        """``action`` is start, stop or restart."""
        path = f"/v1/services/{name}/{action}"
        data: dict[str, Any] = self._request("POST", path, wait=1 if wait else None).json()
        return data

    def reload(self, wait: bool = False, dry_run: bool = False) -> dict[str, Any]:
        params = {"wait": 1 if wait else None, "dry_run": 1 if dry_run else None}
        data: dict[str, Any] = self._request("POST", "/v1/reload", **params).json()
        return data

    def upgrade(self) -> dict[str, Any]:
        data: dict[str, Any] = self._request("POST", "/v1/upgrade").json()
        return data

    def log_tail(self, name: str, lines: int | str, since: float | None) -> list[LogLine]:
        response = self._request("GET", f"/v1/services/{name}/logs", lines=lines, since=since)
        return [_decode(raw) for raw in response.text.splitlines() if raw.strip()]

    def follow_logs(self, name: str, lines: int | str, since: float | None) -> Iterator[LogLine]:
        """The tail, then new lines until the daemon ends the stream."""
        query = {"lines": lines, "follow": 1, "since": since}
        query = {k: v for k, v in query.items() if v is not None}
        try:
            with self._http.stream("GET", f"/v1/services/{name}/logs", params=query) as response:
                if response.status_code >= 400:
                    response.read()
                    raise api_error(response)
                for raw in response.iter_lines():
                    if raw.strip():
                        yield _decode(raw)
        except httpx.TransportError as exc:
            raise unreachable(self.address, exc) from None


def _decode(raw: str) -> LogLine:
    return LogLine.from_json(json.loads(raw))


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


def client_from_args(args: argparse.Namespace) -> ControlClient:
    return ControlClient(args.control, args.token_file)
