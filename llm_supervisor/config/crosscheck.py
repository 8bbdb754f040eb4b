"""Checks that span files: unique names, ports and models, GPU references, GPU overcommit,
and policy entries that refer to no model (warnings)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from ..errors import ConfigIssue
from .modelnames import matches_model_pattern
from .models import Policy, ProfileFile
from .yamlload import LoadedYaml

GIB = 2**30
Key = tuple[str | int, ...]


def check(
    profiles: dict[str, ProfileFile],
    docs: dict[str, LoadedYaml],
    policy: Policy,
    gpu_totals: dict[int | str, int] | None,
    *,
    policy_doc: tuple[str, LoadedYaml] | None = None,
    check_references: bool = True,
) -> list[ConfigIssue]:
    """All cross-file findings. ``policy_doc`` (path, parsed file) places policy warnings."""
    all_docs = dict(docs)
    policy_source = "policy"
    if policy_doc is not None:
        policy_source, all_docs[policy_doc[0]] = policy_doc
    issues: list[ConfigIssue] = []
    issues += _unique_names_and_ports(profiles, all_docs)
    issues += _unique_models(profiles, all_docs)
    issues += _gpu_references(profiles, all_docs, gpu_totals)
    issues += _overcommit(profiles, all_docs, gpu_totals)
    issues += _fallback_loops(policy, policy_source, all_docs)
    if check_references:
        issues += _policy_references(profiles, policy, policy_source, all_docs)
    return issues


def _issue(docs: dict[str, LoadedYaml], source: str, path: Key, msg: str, sev: str) -> ConfigIssue:
    doc = docs.get(source)
    mark = doc.mark_for(path) if doc else None
    line, col = (mark.line, mark.col) if mark else (0, 0)
    return ConfigIssue(source, line, col, ".".join(map(str, path)), msg, sev)


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


def _unique_models(
    profiles: dict[str, ProfileFile], docs: dict[str, LoadedYaml]
) -> list[ConfigIssue]:
    """The gateway routes by model name, so one name must lead to one service."""
    issues: list[ConfigIssue] = []
    owners: dict[str, str] = {}
    for source, profile in profiles.items():
        for name, spec in profile.services.items():
            offered: list[tuple[str, Key]] = [
                (m, ("services", name, "models", i)) for i, m in enumerate(spec.models)
            ]
            if spec.public_name:
                field = "served_name" if spec.served_name else "model"
                offered.append((spec.public_name, ("services", name, field)))
            for model, key in offered:
                owner = owners.setdefault(model, name)
                if owner != name:
                    msg = f"model {model!r} is also offered by service {owner!r}; the gateway "
                    msg += "routes by model name, so only one service may offer it"
                    issues.append(_issue(docs, source, key, msg, "error"))
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


@dataclass(frozen=True)
class _Claim:
    source: str
    service: str
    fraction: float  # of the GPU's memory
    declared: str  # as the operator wrote it: "0.60" or "40.0 GiB"


def _overcommit(
    profiles: dict[str, ProfileFile],
    docs: dict[str, LoadedYaml],
    gpu_totals: dict[int | str, int] | None,
) -> list[ConfigIssue]:
    """Sum what the services of each GPU may claim; more than the GPU holds is an error.

    vLLM claims its gpu-memory-utilization of the whole GPU. Declared ``vram`` budgets
    count only when the GPU's size is known (NVML), since a fraction needs a total.
    """
    claims: dict[int | str, list[_Claim]] = defaultdict(list)
    for source, profile in profiles.items():
        for ref in profile.gpus:
            total = (gpu_totals or {}).get(ref)
            for name, spec in profile.services.items():
                fraction = spec.gpu_memory_utilization
                if fraction is not None:
                    declared = f"gpu-memory-utilization {fraction:.2f}"
                    claims[ref].append(_Claim(source, name, fraction, declared))
                elif spec.vram is not None and total:
                    claims[ref].append(_Claim(source, name, spec.vram / total, "vram"))
    issues = []
    for ref, parts in claims.items():
        share = sum(c.fraction for c in parts)
        if share > 1.0 + 1e-9:
            last = parts[-1]
            msg = _overcommit_message(ref, parts, share, (gpu_totals or {}).get(ref))
            issues.append(_issue(docs, last.source, ("services", last.service), msg, "error"))
    return issues


def _overcommit_message(
    ref: int | str, parts: list[_Claim], share: float, total: int | None
) -> str:
    if total:
        detail = " + ".join(
            f"{c.service} {c.fraction * total / GIB:.1f} GiB ({c.declared})" for c in parts
        )
        return (
            f"GPU {ref} is overcommitted: {detail} = {share * total / GIB:.1f} GiB, "
            f"but the GPU has {total / GIB:.1f} GiB ({share:.0%})"
        )
    detail = " + ".join(f"{c.service} {c.fraction:.2f}" for c in parts)
    return (
        f"GPU {ref} is overcommitted: gpu-memory-utilization {detail} = {share:.2f} "
        "of its memory (at most 1.0)"
    )


def _offered(name: str, models: set[str]) -> bool:
    """Named (as Ollama names models: ``llama3.2`` is ``llama3.2:latest``) or matched by a
    glob, as the gateway will match it."""
    return any(matches_model_pattern(m, name) for m in models)


def _policy_references(
    profiles: dict[str, ProfileFile], policy: Policy, source: str, docs: dict[str, LoadedYaml]
) -> list[ConfigIssue]:
    models: set[str] = set()
    for profile in profiles.values():
        for spec in profile.services.values():
            models.update(spec.models)
            if spec.public_name:
                models.add(spec.public_name)
    issues = []
    for i, rule in enumerate(policy.keep_alive.rules):
        if not any(matches_model_pattern(m, rule.match) for m in models):
            msg = f"rule {rule.match!r} matches no model named in the profiles"
            key: Key = ("keep_alive", "rules", i, "match")
            issues.append(_issue(docs, source, key, msg, "warning"))
    for field in ("pin", "focus", "warmup"):
        for i, name in enumerate(getattr(policy, field)):
            if not _offered(name, models):
                msg = f"{name!r} is not offered by any service"
                issues.append(_issue(docs, source, (field, i), msg, "warning"))
    for model, alternatives in policy.fallbacks.items():
        for i, name in enumerate(alternatives):
            if not _offered(name, models):
                msg = f"fallback {name!r} is not offered by any service"
                issues.append(_issue(docs, source, ("fallbacks", model, i), msg, "warning"))
    if policy.focus:
        for i, name in enumerate(policy.pin):
            if not any(matches_model_pattern(name, f) for f in policy.focus):
                msg = f"pinned model {name!r} is not in focus, so requests for it are refused"
                issues.append(_issue(docs, source, ("pin", i), msg, "warning"))
    return issues


def _fallback_loops(policy: Policy, source: str, docs: dict[str, LoadedYaml]) -> list[ConfigIssue]:
    """A model that falls back, through any chain, to itself would never be served."""
    issues = []
    for model in policy.fallbacks:
        path = _loop_from(model, policy.fallbacks)
        if path:
            msg = "fallbacks form a loop: " + " -> ".join(path)
            issues.append(_issue(docs, source, ("fallbacks", model), msg, "error"))
    return issues


def _loop_from(start: str, edges: dict[str, tuple[str, ...]]) -> list[str] | None:
    """The first chain start -> ... -> start, depth first; None when there is none."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in edges.get(node, ()):
            if nxt == start:
                return [*path, nxt]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None
