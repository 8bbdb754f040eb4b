"""Checks that span files: unique names and ports, GPU references, GPU overcommit, rules."""

from __future__ import annotations

import fnmatch
from collections import defaultdict

from ..errors import ConfigIssue
from .models import Policy, ProfileFile
from .yamlload import LoadedYaml

GIB = 2**30


def check(
    profiles: dict[str, ProfileFile],
    docs: dict[str, LoadedYaml],
    policy: Policy,
    gpu_totals: dict[int | str, int] | None,
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    issues += _unique_names_and_ports(profiles, docs)
    issues += _gpu_references(profiles, docs, gpu_totals)
    issues += _overcommit(profiles, docs, gpu_totals)
    issues += _policy_references(profiles, policy)
    return issues


def _issue(
    docs: dict[str, LoadedYaml], source: str, path: tuple[str | int, ...], msg: str, sev: str
) -> ConfigIssue:
    mark = docs[source].mark_for(path)
    return ConfigIssue(source, mark.line, mark.col, ".".join(map(str, path)), msg, sev)


def _unique_names_and_ports(
    profiles: dict[str, ProfileFile], docs: dict[str, LoadedYaml]
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    names: dict[str, str] = {}
    ports: dict[int, tuple[str, str]] = {}
    for source, profile in profiles.items():
        for name, spec in profile.services.items():
            if name in names:
                where = f"service {name!r} is already defined in {names[name]}"
                issues.append(_issue(docs, source, ("services", name), where, "error"))
            names.setdefault(name, source)
            if spec.port in ports:
                other, other_source = ports[spec.port]
                msg = f"port {spec.port} is already used by service {other!r} in {other_source}"
                issues.append(_issue(docs, source, ("services", name, "port"), msg, "error"))
            ports.setdefault(spec.port, (name, source))
    return issues


def _gpu_references(
    profiles: dict[str, ProfileFile],
    docs: dict[str, LoadedYaml],
    gpu_totals: dict[int | str, int] | None,
) -> list[ConfigIssue]:
    if gpu_totals is None:
        return []
    issues = []
    known = ", ".join(str(k) for k in gpu_totals if isinstance(k, int)) or "none"
    for source, profile in profiles.items():
        for ref in profile.gpus:
            if ref not in gpu_totals:
                msg = f"GPU {ref!r} does not exist on this machine (GPUs: {known})"
                issues.append(_issue(docs, source, ("gpu",), msg, "error"))
    return issues


def _overcommit(
    profiles: dict[str, ProfileFile],
    docs: dict[str, LoadedYaml],
    gpu_totals: dict[int | str, int] | None,
) -> list[ConfigIssue]:
    """Sum what the services of each GPU may claim; more than the GPU holds is an error."""
    claims: dict[int | str, list[tuple[str, str, float]]] = defaultdict(list)
    for source, profile in profiles.items():
        for ref in profile.gpus:
            total = (gpu_totals or {}).get(ref)
            for name, spec in profile.services.items():
                fraction = spec.gpu_memory_utilization
                if fraction is None and spec.vram is not None and total:
                    fraction = spec.vram / total
                if fraction is not None:
                    claims[ref].append((source, name, fraction))
    issues = []
    for ref, parts in claims.items():
        share = sum(f for _, _, f in parts)
        if share <= 1.0 + 1e-9:
            continue
        total = (gpu_totals or {}).get(ref)
        detail = " + ".join(f"{n} {f:.2f}" for _, n, f in parts)
        amount = f" = {share * total / GIB:.1f} GiB of {total / GIB:.1f} GiB" if total else ""
        msg = f"GPU {ref} is overcommitted: {detail} = {share:.2f} of its memory{amount}"
        source, name, _ = parts[-1]
        issues.append(_issue(docs, source, ("services", name), msg, "error"))
    return issues


def _policy_references(profiles: dict[str, ProfileFile], policy: Policy) -> list[ConfigIssue]:
    models: set[str] = set()
    for profile in profiles.values():
        for spec in profile.services.values():
            models.update(spec.models)
            if spec.public_name:
                models.add(spec.public_name)
    issues = []
    for i, rule in enumerate(policy.keep_alive.rules):
        if not any(fnmatch.fnmatchcase(m, rule.match) for m in models):
            msg = f"rule {rule.match!r} matches no model named in the profiles"
            issues.append(ConfigIssue("policy", 0, 0, f"keep_alive.rules.{i}", msg, "warning"))
    for key, names in (("pin", policy.pin), ("focus", policy.focus)):
        for name in names:
            if name not in models:
                msg = f"{name!r} is not offered by any service"
                issues.append(ConfigIssue("policy", 0, 0, key, msg, "warning"))
    return issues
