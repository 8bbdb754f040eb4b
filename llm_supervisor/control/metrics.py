"""Prometheus metrics, read from ``backend.status()`` at scrape time on a private registry.

Families (``service`` = service name, ``gpu`` = GPU index; no PIDs or request ids as labels):

- ``llm_supervisor_build_info{version}`` 1, to join the version onto other series.
- ``llm_supervisor_daemon_start_time_seconds`` Unix time the daemon started.
- ``llm_supervisor_service_up{service,engine}`` 1 when the service is ready (answers), else 0.
- ``llm_supervisor_service_state{service,state}`` 1 for the current state, 0 for the others.
- ``llm_supervisor_service_restarts_total{service,reason}`` restarts by reason (crash, health,
  reload …; ``unspecified`` when the daemon reports only a total).
- ``llm_supervisor_service_last_exit_code{service}`` exit code of the last exit, 128+N when
  killed by signal N; absent until the service has exited once.
- ``llm_supervisor_service_last_exit_timestamp_seconds{service}`` when it last exited.
- ``llm_supervisor_health_check_seconds{service}`` latency of the last health probe.
- ``llm_supervisor_health_check_failures{service}`` consecutive failed probes right now.
- ``llm_supervisor_service_start_elapsed_seconds{service}`` seconds into the current start
  (load); present only while starting, so a graph shows each load as a ramp to its duration.
- ``llm_supervisor_service_rolled_back{service}`` 1 while the service runs its last known good
  spec because a reloaded one failed (``degraded`` in status).
- ``llm_supervisor_requests_waiting{service}`` / ``llm_supervisor_requests_in_flight{service}``
  gateway requests held for the service's start / being served by it.
- ``llm_supervisor_gpu_telemetry_available`` 1 when NVML answers, else 0.
- ``llm_supervisor_gpu_info{gpu,uuid,name}`` 1 per GPU, to map indexes to devices.
- ``llm_supervisor_gpu_up{gpu}`` 1 when this GPU answers NVML, 0 when it is lost or failing.
- ``llm_supervisor_gpu_pressure{gpu,level}`` 1 for the GPU's memory pressure level (normal,
  warning, critical; the policy's thresholds).
- ``llm_supervisor_gpu_memory_total_bytes{gpu}`` / ``llm_supervisor_gpu_memory_used_bytes{gpu}``.
- ``llm_supervisor_gpu_service_memory_bytes{gpu,service}`` GPU memory held by a service's
  processes (the whole process tree).
- ``llm_supervisor_config_reloads_total{result}`` reloads by result (applied, rejected,
  unchanged, queued).
- ``llm_supervisor_config_last_reload_success_timestamp_seconds`` last applied/unchanged reload.
- ``llm_supervisor_config_last_reload_successful`` 0 while the config on disk is rejected.
- ``llm_supervisor_orphans_killed_total`` processes of a previous daemon killed at start.
- ``llm_supervisor_engines_adopted_total`` running engines of a previous daemon (crashed, or
  this one before an upgrade) taken over at start, without a restart.
- ``llm_supervisor_keepalive_rewrites_total{model,rule}`` client keep_alive values the policy
  replaced, by model and the rule that applied.
- ``llm_supervisor_ollama_models_loaded{service}`` models an Ollama service holds in memory.

The gateway adds its own families (gateway/stats.py). Alerting rules and a dashboard built
on these names are in ``deploy/``; tests/test_deploy_metrics.py keeps them in step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric as AnyFamily
from prometheus_client.registry import Collector

from .. import __version__
from .backend import SERVICE_STATES, ControlBackend

PREFIX = "llm_supervisor_"
_SUCCESS = ("applied", "unchanged")
PRESSURE_LEVELS = ("normal", "warning", "critical")

Metric = GaugeMetricFamily | CounterMetricFamily


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    # the client adds the _total suffix on exposition
    return CounterMetricFamily(PREFIX + name, doc, labels=list(labels))


def exit_code_value(last_exit: dict[str, Any]) -> float | None:
    """Shell convention: the exit code, or 128+N for a death by signal N."""
    if last_exit.get("signal") is not None:
        return 128.0 + float(last_exit["signal"])
    code = last_exit.get("code")
    return None if code is None else float(code)


def service_metrics(services: dict[str, Any]) -> list[Metric]:
    up = _gauge(
        "service_up", "1 when the service is ready (answers requests).", ["service", "engine"]
    )
    state = _gauge("service_state", "1 for the service's current state.", ["service", "state"])
    restarts = _counter("service_restarts", "Restarts by reason.", ["service", "reason"])
    code = _gauge("service_last_exit_code", "Last exit code (128+N: signal N).", ["service"])
    exit_at = _gauge("service_last_exit_timestamp_seconds", "Time of the last exit.", ["service"])
    latency = _gauge("health_check_seconds", "Latency of the last health probe.", ["service"])
    failures = _gauge("health_check_failures", "Consecutive failed health probes.", ["service"])
    rolled_back = _gauge(
        "service_rolled_back", "1 while on the last good spec after a failed reload.", ["service"]
    )
    loading = _gauge(
        "service_start_elapsed_seconds", "Seconds into the current start (load).", ["service"]
    )
    waiting = _gauge("requests_waiting", "Gateway requests held for a start.", ["service"])
    in_flight = _gauge("requests_in_flight", "Gateway requests being served.", ["service"])
    supervision = _counter(
        "service_supervision_errors", "Unexpected errors its supervision survived.", ["service"]
    )
    for name, svc in sorted(services.items()):
        waiting.add_metric([name], float(svc.get("waiting") or 0))
        in_flight.add_metric([name], float(svc.get("in_flight") or 0))
        current = svc.get("state")
        up.add_metric([name, str(svc.get("engine", ""))], 1.0 if current == "ready" else 0.0)
        for each in SERVICE_STATES:
            state.add_metric([name, each], 1.0 if each == current else 0.0)
        by_reason = svc.get("restarts_by_reason")
        if by_reason is None:  # a backend without the breakdown: the total, reason unknown
            by_reason = {"unspecified": svc.get("restarts", 0)}
        for reason, count in sorted(by_reason.items()):
            restarts.add_metric([name, str(reason)], float(count or 0))
        last_exit = svc.get("last_exit") or {}
        value = exit_code_value(last_exit)
        if value is not None:
            code.add_metric([name], value)
        if last_exit.get("at") is not None:
            exit_at.add_metric([name], float(last_exit["at"]))
        health = svc.get("health") or {}
        if health.get("last_latency") is not None:
            latency.add_metric([name], float(health["last_latency"]))
        failures.add_metric([name], float(health.get("failures") or 0))
        supervision.add_metric([name], float(svc.get("supervision_errors") or 0))
        rolled_back.add_metric([name], 1.0 if svc.get("degraded") else 0.0)
        elapsed = (svc.get("progress") or {}).get("elapsed")
        if current == "starting" and elapsed is not None:
            loading.add_metric([name], float(elapsed))
    return [
        up,
        state,
        restarts,
        code,
        exit_at,
        latency,
        failures,
        rolled_back,
        loading,
        waiting,
        in_flight,
        supervision,
    ]


def gpu_metrics(gpus: dict[str, Any]) -> list[Metric]:
    available = _gauge("gpu_telemetry_available", "1 when NVML answers.")
    available.add_metric([], 1.0 if gpus.get("available") else 0.0)
    info = _gauge("gpu_info", "1 per GPU: index, UUID and model name.", ["gpu", "uuid", "name"])
    total = _gauge("gpu_memory_total_bytes", "GPU memory size.", ["gpu"])
    used = _gauge("gpu_memory_used_bytes", "GPU memory in use (all processes).", ["gpu"])
    per_service = _gauge(
        "gpu_service_memory_bytes", "GPU memory held by a service's processes.", ["gpu", "service"]
    )
    gpu_up = _gauge("gpu_up", "1 when this GPU answers NVML (0: lost or failing).", ["gpu"])
    pressure = _gauge("gpu_pressure", "1 for the GPU's memory pressure level.", ["gpu", "level"])
    for gpu in gpus.get("gpus") or []:
        index = str(gpu.get("index"))
        info.add_metric([index, str(gpu.get("uuid", "")), str(gpu.get("name", ""))], 1.0)
        gpu_up.add_metric([index], 0.0 if gpu.get("error") else 1.0)
        if gpu.get("pressure") is not None:
            for level in PRESSURE_LEVELS:
                pressure.add_metric([index, level], 1.0 if level == gpu["pressure"] else 0.0)
        memory = gpu.get("memory") or {}
        total.add_metric([index], float(memory.get("total") or 0))
        used.add_metric([index], float(memory.get("used") or 0))
        for service, held in sorted((gpu.get("services") or {}).items()):
            per_service.add_metric([index, service], float(held or 0))
    return [available, info, total, used, per_service, gpu_up, pressure]


def reload_metrics(reload: dict[str, Any]) -> list[Metric]:
    reloads = _counter("config_reloads", "Config reloads by result.", ["result"])
    counts = dict(reload.get("counts") or {})
    if not counts and reload.get("result"):
        counts = {reload["result"]: 1}  # a backend without counters: at least the last one
    for result, count in sorted(counts.items()):
        reloads.add_metric([str(result)], float(count or 0))
    success = _gauge(
        "config_last_reload_success_timestamp_seconds", "Time of the last successful reload."
    )
    when = reload.get("last_success_at")
    if when is None and reload.get("result") in _SUCCESS:
        when = reload.get("at")
    if when is not None:
        success.add_metric([], float(when))
    successful = _gauge(
        "config_last_reload_successful", "0 while the config on disk is rejected, else 1."
    )
    successful.add_metric([], 0.0 if reload.get("result") == "rejected" else 1.0)
    return [reloads, success, successful]


def rewrite_entries(rewrites: Any) -> Iterator[tuple[str, str, float]]:
    """``policy.rewrites`` as (model, rule, count): the documented list of objects, or a
    ``{model: {rule: count}}`` mapping. A missing rule (the policy default) reads "default"."""
    if isinstance(rewrites, dict):
        for model, rules in rewrites.items():
            for rule, count in (rules or {}).items():
                yield str(model), str(rule or "default"), float(count or 0)
        return
    for item in rewrites or []:
        yield (
            str(item.get("model", "")),
            str(item.get("rule") or "default"),
            float(item.get("count") or 0),
        )


def model_metrics(status: dict[str, Any]) -> list[Metric]:
    rewrites = _counter(
        "keepalive_rewrites", "Client keep_alive values replaced by the policy.", ["model", "rule"]
    )
    for model, rule, count in rewrite_entries((status.get("policy") or {}).get("rewrites")):
        rewrites.add_metric([model, rule], count)
    loaded = _gauge(
        "ollama_models_loaded", "Models an Ollama service holds in memory.", ["service"]
    )
    per_service: dict[str, int] = {
        name: 0
        for name, svc in (status.get("services") or {}).items()
        if svc.get("engine") == "ollama"
    }
    for model in status.get("models") or []:
        if model.get("loaded"):
            service = str(model.get("service", ""))
            per_service[service] = per_service.get(service, 0) + 1
    for service, count in sorted(per_service.items()):
        loaded.add_metric([service], float(count))
    return [rewrites, loaded]


def daemon_metrics(status: dict[str, Any]) -> list[Metric]:
    build = _gauge("build_info", "Always 1; the version as a label.", ["version"])
    build.add_metric([str(status.get("version") or __version__)], 1.0)
    started = _gauge("daemon_start_time_seconds", "Time the daemon started.")
    daemon = status.get("daemon") or {}
    if daemon.get("started_at") is not None:
        started.add_metric([], float(daemon["started_at"]))
    orphans = _counter("orphans_killed", "Processes of a previous daemon killed at start.")
    orphans.add_metric([], float(daemon.get("orphans_killed") or 0))
    task_errors = _counter("daemon_task_errors", "Unexpected errors a daemon loop survived.",
                           ["task"])  # fmt: skip
    for task, count in sorted((daemon.get("task_errors") or {}).items()):
        task_errors.add_metric([str(task)], float(count or 0))
    adopted = _counter(
        "engines_adopted", "Running engines of a previous daemon taken over at start."
    )
    adopted.add_metric([], float(daemon.get("engines_adopted") or 0))
    return [build, started, orphans, task_errors, adopted]


class StatusCollector(Collector):
    """Reads the status document once per scrape and turns it into metric families."""

    def __init__(self, backend: ControlBackend) -> None:
        self._backend = backend

    def collect(self) -> Iterator[Metric]:
        status = self._backend.status()
        yield from daemon_metrics(status)
        yield from service_metrics(status.get("services") or {})
        yield from gpu_metrics(status.get("gpus") or {})
        yield from reload_metrics(status.get("reload") or {})
        yield from model_metrics(status)


class MergedCollector(Collector):
    """Other collectors (the gateway's counters) first, then the status families; a name seen
    twice is dropped, so a richer family elsewhere (``keepalive_rewrites`` with a ``kind``
    label) replaces the status-derived one instead of breaking the exposition."""

    def __init__(self, collectors: Sequence[Collector]) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[AnyFamily]:
        seen: set[str] = set()
        for collector in self._collectors:
            for family in collector.collect():
                if family.name not in seen:
                    seen.add(family.name)
                    yield family


def build_registry(backend: ControlBackend, extra: Sequence[Collector] = ()) -> CollectorRegistry:
    """A private registry (never the global one: tests and embedders stay independent)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MergedCollector([*extra, StatusCollector(backend)]))
    return registry
