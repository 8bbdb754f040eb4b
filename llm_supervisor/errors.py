"""One hierarchy of typed errors. Only ``cli.py`` turns them into messages and exit codes."""

from __future__ import annotations

from dataclasses import dataclass


class SupervisorError(Exception):
    """Base of every error this project raises on purpose."""


@dataclass(frozen=True)
class ConfigIssue:
    """One finding about the config, printed compiler-style."""

    path: str
    line: int
    col: int
    key: str
    message: str
    severity: str = "error"

    def format(self) -> str:
        where = f"{self.path}:{self.line}:{self.col}" if self.line else self.path
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class ConfigError(SupervisorError):
    """The config directory is invalid; carries every error found, not just the first."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = [i for i in issues if i.severity == "error"]
        self.warnings = [i for i in issues if i.severity != "error"]
        super().__init__("\n".join(i.format() for i in self.issues))


class ServiceError(SupervisorError):
    """A lifecycle request for a service could not be satisfied."""


class UnknownServiceError(ServiceError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no service named {name!r}")
        self.name = name


class StartFailedError(ServiceError):
    """The service did not become ready; ``cause``/``hint`` come from the diagnosis."""

    def __init__(self, name: str, reason: str, cause: str = "unknown", hint: str = "") -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason
        self.cause = cause
        self.hint = hint


class AdmissionError(StartFailedError):
    """Not enough free GPU memory to start the service."""


class PortInUseError(StartFailedError):
    """The service's port is held by another process."""


class StateDirBusyError(SupervisorError):
    """Another daemon owns this state dir (its orphan sweep would kill that daemon's engines)."""


class DaemonUnreachableError(SupervisorError):
    """The CLI cannot reach the daemon's control API."""


class ControlError(SupervisorError):
    """The control API refused a request, or cannot be served as configured."""


class ControlAddressError(ControlError):
    """A malformed control address, or TCP on a non-loopback host without a token."""


class ControlAuthError(ControlError):
    """The control API wants a bearer token that was not sent or does not match."""


class ListenError(SupervisorError):
    """The gateway's or the control API's address cannot be listened on."""


class UpgradeError(SupervisorError):
    """An in-place upgrade was refused: the new code cannot start, or one is under way."""
