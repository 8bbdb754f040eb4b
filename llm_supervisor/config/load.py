"""Read a config directory into a validated ``Config``, collecting every error at once."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError, ConfigIssue
from . import crosscheck
from .models import Config, Policy, ProfileFile, ServiceConfig
from .yamlload import LoadedYaml, YamlSyntaxError, load_yaml

_M = TypeVar("_M", bound=BaseModel)

POLICY_STEM = "policy"
SUFFIXES = (".yaml", ".yml")


@dataclass
class _Collector:
    issues: list[ConfigIssue] = field(default_factory=list)

    def error(self, path: str, line: int, col: int, key: str, message: str) -> None:
        self.issues.append(ConfigIssue(path, line, col, key, message))


def config_files(config_dir: Path) -> list[Path]:
    """The YAML files that make up the config (top level only; editors' temp files skipped)."""
    return sorted(
        p for p in config_dir.iterdir()
        if p.suffix in SUFFIXES and not p.name.startswith(".") and p.is_file()
    )  # fmt: skip


def fingerprint(config_dir: Path) -> str:
    """Hash of names and contents: a touch or chmod leaves it unchanged."""
    digest = hashlib.sha256()
    for path in config_files(config_dir):
        digest.update(path.name.encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            digest.update(repr(exc).encode())
    return digest.hexdigest()


def load_config(
    config_dir: Path, gpu_totals: dict[int | str, int] | None = None
) -> tuple[Config, list[ConfigIssue]]:
    """Load and validate; return the config and its warnings, or raise ConfigError.

    ``gpu_totals`` maps every known GPU (index and UUID) to its memory in bytes, when NVML
    telemetry is available; without it only checks that need no hardware facts are made.
    """
    collector = _Collector()
    if not config_dir.is_dir():
        raise ConfigError([ConfigIssue(str(config_dir), 0, 0, "", "is not a directory")])
    profiles: dict[str, ProfileFile] = {}
    profile_docs: dict[str, LoadedYaml] = {}
    policies: list[tuple[str, Policy]] = []
    for path in config_files(config_dir):
        name = str(path)
        doc = _read(path, collector)
        if doc is None:
            continue
        if path.stem == POLICY_STEM:
            policy = _validate(Policy, doc, name, collector)
            if policy is not None:
                policies.append((name, policy))
        else:
            profile = _validate(ProfileFile, doc, name, collector)
            if profile is not None:
                profiles[name] = profile
                profile_docs[name] = doc
    policy_files = [p for p in config_files(config_dir) if p.stem == POLICY_STEM]
    if len(policy_files) > 1:
        names = ", ".join(p.name for p in policy_files)
        collector.error(str(policy_files[1]), 1, 1, "", f"more than one policy file ({names})")
    if not any(p.stem != POLICY_STEM for p in config_files(config_dir)):
        collector.error(str(config_dir), 0, 0, "", "no profiles (*.yaml) in the config directory")
    policy = policies[0][1] if policies else Policy()
    services = _services(profiles)
    collector.issues += crosscheck.check(profiles, profile_docs, policy, gpu_totals)
    errors = [i for i in collector.issues if i.severity == "error"]
    if errors:
        raise ConfigError(collector.issues)
    config = Config(
        services=services, policy=policy, policy_source=policies[0][0] if policies else None
    )
    return config, [i for i in collector.issues if i.severity != "error"]


def _read(path: Path, collector: _Collector) -> LoadedYaml | None:
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        collector.error(name, 0, 0, "", f"cannot read: {exc.strerror or exc}")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        collector.error(name, 1, 1, "", f"not UTF-8 text (byte {exc.start}); is this a YAML file?")
        return None
    if "\0" in text:
        collector.error(name, 1, 1, "", "contains NUL bytes; is this a YAML file?")
        return None
    try:
        doc = load_yaml(text)
    except YamlSyntaxError as exc:
        collector.error(name, exc.mark.line, exc.mark.col, "", str(exc))
        return None
    if doc.data is None:
        collector.error(name, 1, 1, "", "file is empty; delete it or add a mapping")
        return None
    if not isinstance(doc.data, dict):
        kind = type(doc.data).__name__
        collector.error(name, 1, 1, "", f"expected a mapping at the top level, got {kind}")
        return None
    return doc


def _validate(
    model: type[_M], doc: LoadedYaml, name: str, collector: _Collector
) -> _M | None:
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            mark = doc.mark_for(loc)
            key = ".".join(str(p) for p in loc)
            collector.error(name, mark.line, mark.col, key, _message(err, loc))
        return None


def _message(err: Any, loc: tuple[Any, ...]) -> str:
    kind = err["type"]
    given = err.get("input")
    if kind == "extra_forbidden":
        unknown = str(loc[-1]) if loc else ""
        close = difflib.get_close_matches(unknown, _all_field_names(), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown key {unknown!r}{hint}"
    if kind == "missing":
        return "required key is missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        return f"expected an integer, got {given!r}"
    if kind == "literal_error":
        return f"{msg}, got {given!r}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{msg}, got {given!r}"
    return msg


def _all_field_names() -> list[str]:
    from . import models

    names: set[str] = set()
    for obj in vars(models).values():
        if isinstance(obj, type) and issubclass(obj, BaseModel) and obj is not BaseModel:
            names.update(obj.model_fields)
    return sorted(names)


def _services(profiles: dict[str, ProfileFile]) -> dict[str, ServiceConfig]:
    services: dict[str, ServiceConfig] = {}
    for source, profile in profiles.items():
        for name, spec in profile.services.items():
            services.setdefault(
                name, ServiceConfig(name=name, spec=spec, gpus=profile.gpus, source=source)
            )
    return services


def format_issues(issues: Iterable[ConfigIssue]) -> str:
    return "\n".join(i.format() for i in issues)
