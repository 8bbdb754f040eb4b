"""At critical GPU memory pressure, unload idle, non-pinned Ollama models (LRU) — and say so.

The choice is ``gpu.pressure.choose_ollama_unloads``; this module gathers what Ollama has
loaded (the gateway's last ``/api/ps``) and asks Ollama to unload (keep_alive 0).
"""

from __future__ import annotations

from ..config.modelnames import canonical_model_name
from ..config.models import Config
from ..gpu.pressure import LoadedModel, PressureEvent, bytes_above, choose_ollama_unloads
from ..logsetup import get_logger
from .models_view import PolicyState, parse_expires_at
from .routing import upstream_of
from .upstream import UpstreamClient

log = get_logger(__name__)


def loaded_models(state: PolicyState, config: Config, gpu: int) -> list[LoadedModel]:
    found = []
    for name, svc in config.services.items():
        if svc.spec.engine != "ollama" or not any(str(g) == str(gpu) for g in svc.gpus):
            continue
        for row in state.ps.get(name) or ():
            model = canonical_model_name(str(row.get("name", "")))
            found.append(LoadedModel(
                name=model, service=name, size_vram=int(row.get("size_vram") or 0),
                last_used=state.model_last_request.get(model),
                expires_at=parse_expires_at(row.get("expires_at")),
                pinned=config.policy.is_pinned(model),
                in_flight=state.models_in_flight.get(model, 0),
            ))  # fmt: skip
    return found


async def relieve(
    state: PolicyState, client: UpstreamClient, config: Config, event: PressureEvent
) -> list[str]:
    """Unload enough idle models on the GPU to get below the warning level."""
    free_up = bytes_above(event.used, event.total, config.policy.pressure.warning)
    chosen = choose_ollama_unloads(loaded_models(state, config, event.gpu), free_up)
    for model in chosen:
        up = upstream_of(config.services[model.service])
        log.warning(
            "gpu.pressure_unload", gpu=event.gpu, model=model.name, service=model.service,
            size_vram=model.size_vram, reason="critical memory pressure; idle and not pinned",
        )  # fmt: skip
        try:
            await client.post_json(
                up, "/api/generate", {"model": model.name, "keep_alive": 0}, timeout=30.0
            )
        except Exception as exc:  # one failed unload must not stop the others
            log.error("gpu.pressure_unload_failed", model=model.name, error=repr(exc))
    if not chosen:
        log.warning("gpu.pressure_nothing_to_unload", gpu=event.gpu)
    return [m.name for m in chosen]
