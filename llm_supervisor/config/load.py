"""Read a config directory into a validated ``Config``, collecting every error at once.

Nothing but ``ConfigError`` leaves ``load_config``: a file caught half-written by an editor,
one that vanished between listing and reading, or one that is not YAML at all are ordinary
errors with a position, so a hot reload rejects them and retries on the next change.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError, ConfigIssue
from . import crosscheck
from .envvars import expand_tree
from .gatewaykeys import GatewayKeys
from .keysfile import load_gateway_keys
from .messages import found, validation_issues
from .models import Config, Policy, ProfileFile, ServiceConfig
from .trust import untrusted_reason
from .yamlload import LoadedYaml, YamlSyntaxError, load_yaml

_M = TypeVar("_M", bound=BaseModel)

POLICY_STEM = "policy"
SUFFIXES = (".yaml", ".yml")
# A profile is a few KiB. The cap bounds what a stray file can cost: 1 MiB parses in ~0.5 s.
MAX_FILE_BYTES = 2**20


@dataclass
class _Collector:
    issues: list[ConfigIssue] = field(default_factory=list)

    def error(self, path: str, line: int, col: int, key: str, message: str) -> None:
        self.issues.append(ConfigIssue(path, line, col, key, message))


@dataclass
class _Loaded:
    profiles: dict[str, ProfileFile] = field(default_factory=dict)
    docs: dict[str, LoadedYaml] = field(default_factory=dict)
    policies: list[tuple[str, Policy, LoadedYaml]] = field(default_factory=list)
    profile_files: int = 0  # profile files seen, valid or not


def config_files(config_dir: Path) -> list[Path]:
    """The YAML files that make up the config (top level only; editors' temp files skipped).

    Directories and dangling symlinks named ``*.yaml`` are listed so that they are reported
    instead of silently dropping a profile; FIFOs and sockets are skipped (reading blocks).
    """
    return sorted(
        p for p in config_dir.iterdir()
        if p.suffix in SUFFIXES and not p.name.startswith(".")
        and (p.is_file() or p.is_dir() or (p.is_symlink() and not p.exists()))
    )  # fmt: skip


def fingerprint(config_dir: Path) -> str:
    """Hash of names and contents: a touch or chmod leaves it unchanged."""
    digest = hashlib.sha256()
    try:
        paths = config_files(config_dir)
    except OSError as exc:
        paths = []
        digest.update(repr(exc).encode())
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            digest.update(repr(exc).encode())
    return digest.hexdigest()


def load_config(
    config_dir: Path,
    gpu_totals: dict[int | str, int] | None = None,
    keys_file: Path | None = None,
) -> tuple[Config, list[ConfigIssue]]:
    """Load and validate; return the config and its warnings, or raise ConfigError.

    ``gpu_totals`` maps every known GPU (index and UUID) to its memory in bytes, when NVML
    telemetry is available; without it only checks that need no hardware facts are made.
    ``keys_file``: the gateway's API keys (``run --gateway-keys``), validated with the rest.
    """
    collector = _Collector()
    try:
        paths = config_files(config_dir)
    except OSError as exc:
        reason = "is not a directory" if config_dir.exists() else "does not exist"
        if config_dir.is_dir():
            reason = f"cannot be listed: {exc.strerror or exc}"
        raise ConfigError([ConfigIssue(str(config_dir), 0, 0, "", reason)]) from None
    untrusted = untrusted_reason(config_dir)
    if untrusted:
        collector.error(str(config_dir), 0, 0, "", untrusted)
    loaded = _load_files(paths, collector)
    gateway_keys = _load_keys(keys_file, collector)
    _directory_checks(config_dir, paths, loaded, collector)
    policy_name, policy, policy_doc = (
        loaded.policies[0] if loaded.policies else (None, Policy(), None)
    )
    all_valid = loaded.profile_files == len(loaded.profiles)
    collector.issues += crosscheck.check(
        loaded.profiles,
        loaded.docs,
        policy,
        gpu_totals,
        policy_doc=(policy_name, policy_doc) if policy_name and policy_doc else None,
        check_references=all_valid,  # a broken profile would make every rule look unused
    )
    issues = sorted(collector.issues, key=lambda i: (i.path, i.line, i.col))
    if any(i.severity == "error" for i in issues):
        raise ConfigError(issues)
    config = Config(
        services=_services(loaded.profiles),
        policy=policy,
        policy_source=policy_name,
        gateway_keys=gateway_keys,
    )
    return config, issues


def _load_keys(keys_file: Path | None, collector: _Collector) -> GatewayKeys | None:
    if keys_file is None:
        return None
    try:
        return load_gateway_keys(keys_file)
    except ConfigError as exc:
        collector.issues += exc.issues
        return None


def _load_files(paths: list[Path], collector: _Collector) -> _Loaded:
    loaded = _Loaded()
    for path in paths:
        name = str(path)
        is_policy = path.stem == POLICY_STEM
        loaded.profile_files += 0 if is_policy else 1
        doc = _read(path, collector, empty_ok=is_policy)  # every policy key has a default
        if doc is None:
            continue
        if is_policy:
            policy = _validate(Policy, doc, name, collector)
            if policy is not None:
                loaded.policies.append((name, policy, doc))
        else:
            profile = _validate(ProfileFile, doc, name, collector)
            if profile is not None:
                loaded.profiles[name] = profile
                loaded.docs[name] = doc
    return loaded


def _directory_checks(
    config_dir: Path, paths: list[Path], loaded: _Loaded, collector: _Collector
) -> None:
    policy_files = [p for p in paths if p.stem == POLICY_STEM]
    if len(policy_files) > 1:
        names = " and ".join(p.name for p in policy_files)
        msg = f"more than one policy file ({names}); keep one"
        collector.error(str(policy_files[1]), 1, 1, "", msg)
    if loaded.profile_files == 0:
        msg = "no profiles in the config directory (expected gpu0.yaml or another *.yaml)"
        collector.error(str(config_dir), 0, 0, "", msg)


def _read(path: Path, collector: _Collector, *, empty_ok: bool = False) -> LoadedYaml | None:
    name = str(path)
    reason = untrusted_reason(path)
    if reason:
        collector.error(name, 0, 0, "", reason)
        return None
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            msg = (
                f"file is {size / 2**20:.1f} MiB; a config file may be at most "
                f"{MAX_FILE_BYTES >> 20} MiB (profiles are a few KiB): is this a profile?"
            )
            collector.error(name, 1, 1, "", msg)
            return None
        raw = path.read_bytes()
    except OSError as exc:
        collector.error(name, 1, 1, "", f"cannot read: {exc.strerror or exc}")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        msg = f"not UTF-8 text (byte {exc.start}); is this a YAML file?"
        collector.error(name, line, 1, "", msg)
        return None
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        collector.error(name, line, 1, "", "contains NUL bytes; is this a YAML file?")
        return None
    try:
        doc = load_yaml(text)
    except YamlSyntaxError as exc:
        key = ".".join(str(part) for part in exc.path)
        collector.error(name, exc.mark.line, exc.mark.col, key, str(exc))
        return None
    if doc.data is None and empty_ok:
        doc.data = {}
    if doc.data is None:
        collector.error(name, 1, 1, "", "file is empty (or only comments); expected a mapping")
        return None
    if not isinstance(doc.data, dict):
        mark = doc.mark_for(())
        msg = f"expected a mapping (key: value) at the top level, got {found(doc.data)}"
        collector.error(name, mark.line, mark.col, "", msg)
        return None
    return _expand_env(doc, name, collector)


def _expand_env(doc: LoadedYaml, name: str, collector: _Collector) -> LoadedYaml | None:
    """``${NAME}`` in strings, from the daemon's environment (envvars.py); every unset
    variable is reported, and the file is not validated further (each would cascade)."""
    doc.data, problems = expand_tree(doc.data, os.environ)
    for path, message in problems:
        mark = doc.mark_for(path)
        collector.error(name, mark.line, mark.col, ".".join(map(str, path)), message)
    return None if problems else doc


def _validate(model: type[_M], doc: LoadedYaml, name: str, collector: _Collector) -> _M | None:
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        collector.issues += validation_issues(exc, doc, name, model)
        return None


def _services(profiles: dict[str, ProfileFile]) -> dict[str, ServiceConfig]:
    services: dict[str, ServiceConfig] = {}
    for source, profile in profiles.items():
        for name, spec in profile.services.items():
            services.setdefault(
                name, ServiceConfig(name=name, spec=spec, gpus=profile.gpus, source=source)
            )
    return services
