"""Resource limits the daemon sets for itself at start."""

from __future__ import annotations

import resource
from dataclasses import dataclass

from ..logsetup import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class NofileLimits:
    before: int  # the soft limit the daemon was started with
    soft: int  # the soft limit now
    hard: int


def raise_nofile() -> NofileLimits:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as Go's runtime and nginx's
    worker_rlimit_nofile do: the common soft default of 1024 is a compatibility limit for
    select(), which the daemon never uses, and it ran out at about 1,500 idle clients.
    Both numbers are logged; children get the raised limit too (engines open many files).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    raised = soft
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            raised = wanted
        except (ValueError, OSError) as exc:  # e.g. above fs.nr_open
            log.warning("daemon.nofile_raise_failed", soft=soft, hard=hard, error=str(exc))
    log.info("daemon.nofile", soft_before=soft, soft=raised, hard=hard)
    return NofileLimits(soft, raised, hard)
