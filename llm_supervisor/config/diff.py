"""The pure half of hot reload: what changed between two configs, and what that means.

Frozen config models compare by value; a service is restarted only when a field that shapes
its process changed, everything else is applied to the running service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .models import Config, Policy, ServiceConfig

# A change in any of these restarts the service; anything else is applied live.
LAUNCH_FIELDS = ("engine", "model", "served_name", "command", "args", "env", "port")


@dataclass(frozen=True)
class ConfigDiff:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    policy: tuple[str, ...] = ()  # the policy sections that changed (keep_alive, pin, ...)

    @property
    def policy_changed(self) -> bool:
        return bool(self.policy)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.restarted or self.updated or self.policy)

    def to_json(self) -> dict[str, Any]:
        # Every value is a list of names: renderers join them.
        return {
            "started": list(self.added),
            "stopped": list(self.removed),
            "restarted": list(self.restarted),
            "updated": list(self.updated),
            "policy": list(self.policy),
        }


def launch_changed(old: ServiceConfig, new: ServiceConfig) -> bool:
    if old.gpus != new.gpus:
        return True
    return any(getattr(old.spec, f) != getattr(new.spec, f) for f in LAUNCH_FIELDS)


def policy_sections(old: Policy, new: Policy) -> tuple[str, ...]:
    return tuple(f for f in Policy.model_fields if getattr(old, f) != getattr(new, f))


def gateway_sections(old: Config, new: Config) -> tuple[str, ...]:
    """The gateway's keys count as a policy section: a change is applied, never skipped."""
    return ("gateway_keys",) if old.gateway_keys != new.gateway_keys else ()


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    """Pure: which services to start, stop, restart or update in place."""
    names_old, names_new = set(old.services), set(new.services)
    common = sorted(names_old & names_new)
    changed = [n for n in common if old.services[n] != new.services[n]]
    relaunch = [n for n in changed if launch_changed(old.services[n], new.services[n])]
    return ConfigDiff(
        added=tuple(sorted(names_new - names_old)),
        removed=tuple(sorted(names_old - names_new)),
        restarted=tuple(relaunch),
        updated=tuple(n for n in changed if n not in relaunch),
        policy=policy_sections(old.policy, new.policy) + gateway_sections(old, new),
    )


def keep_rollbacks(
    new: Config, rolled_back: dict[str, tuple[ServiceConfig, ServiceConfig]]
) -> tuple[Config, list[str]]:
    """Pure: a service rolled back stays on its good spec while its file still says the bad one.

    ``rolled_back`` maps name → (bad spec from the file, good spec running). Returns the config
    to diff against and the names whose file entry changed since (their rollback is over).
    """
    services, over = dict(new.services), []
    for name, (bad, good) in rolled_back.items():
        if services.get(name) == bad:
            services[name] = good  # an unrelated edit must not retry the spec that crashed
        else:
            over.append(name)
    return new.model_copy(update={"services": services}), over
