"""How long starts take, for the ETA a waiting client is shown.

The last successful start of each service is kept in the state dir, so the first load after
a daemon restart already has an estimate. Written atomically (temp file, then rename); a
state dir that cannot be written costs the estimate, never supervision.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..logsetup import get_logger

log = get_logger(__name__)
MIN_FRACTION = 0.05  # below this a progress bar says too little to extrapolate from


class StartHistory:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._last: dict[str, float] = self._load()
        self._warned = False

    def _load(self) -> dict[str, float]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: float(v) for k, v in data.items() if isinstance(v, int | float) and v >= 0}

    def last(self, service: str) -> float | None:
        return self._last.get(service)

    def record(self, service: str, seconds: float) -> None:
        self._last[service] = round(seconds, 3)
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self._last, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:
            if not self._warned:
                log.warning("state.write_failed", path=str(self.path), error=str(exc))
                self._warned = True


def estimate_eta(
    elapsed: float | None,
    last_duration: float | None,
    fraction: float | None = None,
    phase_elapsed: float | None = None,
) -> float | None:
    """Seconds until ready, or None when nothing can say.

    Two sources: the load progress parsed from the engine's output (a phase that shows a
    fraction done, extrapolated), and the last successful start of this service minus the
    time spent so far. A progress bar covers one phase only (weights load before compiling
    and graph capture), so when both speak the larger one is the honest estimate.
    """
    estimates = []
    if fraction is not None and MIN_FRACTION <= fraction < 1 and phase_elapsed:
        estimates.append(phase_elapsed * (1 - fraction) / fraction)
    if last_duration is not None:
        estimates.append(max(0.0, last_duration - (elapsed or 0.0)))
    return round(max(estimates), 1) if estimates else None
