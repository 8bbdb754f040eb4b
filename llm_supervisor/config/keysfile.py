"""Reading the gateway's keys file into ``GatewayKeys``, with compiler-style errors.

A malformed file is rejected like a broken profile (file:line), so on a reload the keys
that were in force stay in force.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from ..errors import ConfigError, ConfigIssue
from .gatewaykeys import GatewayKey, GatewayKeys, GatewayKeysFile
from .messages import validation_issues
from .trust import untrusted_reason
from .yamlload import LoadedYaml, YamlSyntaxError, load_yaml

CREDENTIAL_NAME = "gateway-keys"  # systemd: LoadCredential=gateway-keys:/etc/…
MAX_KEYS_BYTES = 1 << 20


def gateway_keys_file(arg: Path | None) -> Path | None:
    """``--gateway-keys``, else systemd's ``LoadCredential=gateway-keys:…``, else none."""
    if arg is not None:
        return arg
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    candidate = Path(credentials) / CREDENTIAL_NAME if credentials else None
    return candidate if candidate is not None and candidate.exists() else None


def load_gateway_keys(path: Path) -> GatewayKeys:
    """Read and validate the keys file; ConfigError (file:line) if anything is wrong."""
    name = str(path)

    def fail(line: int, col: int, key: str, message: str) -> ConfigError:
        return ConfigError([ConfigIssue(name, line, col, key, message)])

    reason = untrusted_reason(path)
    if reason:
        raise fail(0, 0, "", reason)
    try:
        raw = path.read_bytes()[: MAX_KEYS_BYTES + 1]
        text = raw.decode("utf-8")
    except OSError as exc:
        raise fail(0, 0, "", f"cannot read the gateway keys file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise fail(1, 1, "", f"not UTF-8 text (byte {exc.start})") from None
    if len(raw) > MAX_KEYS_BYTES:
        raise fail(1, 1, "", "larger than 1 MiB; not a keys file")
    try:
        doc = load_yaml(text)
    except YamlSyntaxError as exc:
        raise fail(exc.mark.line, exc.mark.col, "", str(exc)) from None
    if not isinstance(doc.data, list):
        mark = doc.mark_for(())
        message = "expected a list of keys (- {name: …, key_sha256: …, role: user})"
        raise fail(mark.line, mark.col, "", message)
    return GatewayKeys(source=name, keys=_validate(doc, name))


def _validate(doc: LoadedYaml, name: str) -> tuple[GatewayKey, ...]:
    wrapped = LoadedYaml({"keys": doc.data}, {("keys", *p): m for p, m in doc.marks.items()})
    try:
        keys = GatewayKeysFile.model_validate(wrapped.data).keys
    except ValidationError as exc:
        issues = validation_issues(exc, wrapped, name, GatewayKeysFile)
        raise ConfigError([_unwrapped(i) for i in issues]) from None
    issues = []
    seen: dict[object, int] = {}
    for index, key in enumerate(keys):
        for what, value in (("name", key.name), ("key", key.digest)):
            if (what, value) in seen:
                mark = doc.mark_for((index,))
                message = f"the same {what} as entry {seen[(what, value)] + 1}"
                issues.append(ConfigIssue(name, mark.line, mark.col, str(index), message))
            seen.setdefault((what, value), index)
    if issues:
        raise ConfigError(issues)
    return keys


def _unwrapped(issue: ConfigIssue) -> ConfigIssue:
    key = issue.key.removeprefix("keys").removeprefix(".")
    return ConfigIssue(issue.path, issue.line, issue.col, key, issue.message, issue.severity)
