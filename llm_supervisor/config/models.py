"""The config model: per-GPU profiles and the central policy.

Every model is frozen and forbids unknown keys. Frozen models compare by value, which is
what the hot-reload diff relies on.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..durations import FOREVER, format_duration
from . import vllmargs

# Field types live in fieldtypes.py; re-exported here, where callers have always found them.
from .fieldtypes import ArgValue as ArgValue
from .fieldtypes import ByteSize as ByteSize
from .fieldtypes import Duration as Duration
from .fieldtypes import EnvName as EnvName
from .fieldtypes import EnvValue as EnvValue
from .fieldtypes import GpuField as GpuField
from .fieldtypes import LocatedValueError as LocatedValueError
from .fieldtypes import Port as Port
from .fieldtypes import ServiceName as ServiceName
from .fieldtypes import parse_size as parse_size
from .gatewaykeys import GatewayKeys
from .modelnames import same_model


def _dur(seconds: float) -> str:
    return format_duration(seconds) if seconds >= 0 else f"{seconds:g}s"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class HealthSpec(Strict):
    startup_timeout: Duration | None = Field(
        default=None,
        description="How long a start may take until ready (default: vllm 20m, else 2m).",
    )
    interval: Duration = Field(default=10.0, description="Probe period (startup and liveness).")
    timeout: Duration = Field(default=5.0, description="Timeout of one probe request.")
    failures: int = Field(default=3, ge=1, description="Consecutive failed probes before restart.")
    ready_path: str | None = Field(
        default=None, description="HTTP path that answers 2xx once ready (engine: command)."
    )
    stable_after: Duration = Field(
        default=60.0, description="A run that stayed ready this long resets the backoff."
    )

    @model_validator(mode="after")
    def _probe_timing(self) -> HealthSpec:
        # A probe every 0 s spins, a forever one never runs; a probe allowed to outlast the
        # period makes the period meaningless (a hang would be noticed after timeouts).
        for key, value in (("interval", self.interval), ("timeout", self.timeout)):
            if not 0 < value < FOREVER:
                msg = f"expected a duration above 0 and below forever, e.g. 10s, got {_dur(value)}"
                raise LocatedValueError((key,), msg)
        if self.timeout >= self.interval:
            msg = (
                f"timeout ({_dur(self.timeout)}) must be shorter than interval "
                f"({_dur(self.interval)}): a probe must end before the next one starts"
            )
            raise LocatedValueError(("timeout",), msg)
        return self


class RestartSpec(Strict):
    max_failures: int = Field(default=5, ge=1, description="Failures within window → fatal.")
    window: Duration = Field(default=600.0, description="Window that counts failures.")
    backoff_initial: Duration = Field(default=1.0, description="First restart delay; doubles.")
    backoff_max: Duration = Field(default=60.0, description="Cap of the restart delay.")


class ServiceSpec(Strict):
    """One engine server. The launch fields decide whether a reload restarts it."""

    engine: Literal["vllm", "ollama", "command"] = Field(
        description="vllm | ollama | command (any OpenAI-compatible server)."
    )
    model: str | None = Field(default=None, description="vLLM: model path or HF id to serve.")
    served_name: str | None = Field(default=None, description="Name clients use; default: model.")
    models: tuple[str, ...] = Field(default=(), description="Ollama: models this server offers.")
    port: Port = Field(description="The engine binds 127.0.0.1:port.")
    command: tuple[str, ...] | None = Field(
        default=None, min_length=1, description="Executable and leading args (argv, no shell)."
    )
    args: dict[str, ArgValue] = Field(
        default_factory=dict,
        description="Engine flags: {max-model-len: 16384} → --max-model-len 16384",
    )
    env: dict[EnvName, EnvValue] = Field(
        default_factory=dict, description="Extra environment variables for the engine process."
    )
    start: Literal["boot", "on-demand"] = Field(
        default="boot", description="boot: at daemon start; on-demand: on the first request."
    )
    health: HealthSpec = Field(default=HealthSpec(), description="Readiness and liveness probes.")
    restart: RestartSpec = Field(default=RestartSpec(), description="Restart backoff and limits.")
    stop_timeout: Duration | None = Field(
        default=None,
        description="Grace after SIGTERM before SIGKILL (default: vllm 30s, else 10s).",
    )
    vram: ByteSize | None = Field(
        default=None, description="Declared GPU memory budget (non-vLLM engines), e.g. 40GiB."
    )
    warmup: bool = Field(
        default=False,
        description="vLLM/command: send one 1-token completion after ready, before the gateway "
        "routes to it (Ollama: the policy's warmup list).",
    )

    @model_validator(mode="after")
    def _engine_requirements(self) -> ServiceSpec:
        for key, wrong, message in (
            ("model", self.engine == "vllm" and not self.model,
             "engine vllm needs 'model' (a path or Hugging Face id)"),
            ("command", self.engine == "command" and not self.command,
             "engine command needs 'command' (the server's argv)"),
            ("models", self.engine == "vllm" and bool(self.models),
             "engine vllm serves one model: use 'model' (and 'served_name'), not 'models'"),
            ("model", self.engine == "ollama" and self.model is not None,
             "engine ollama takes 'models: [...]' (the models it offers), not 'model'"),
            ("vram", self.engine == "vllm" and self.vram is not None,
             "engine vllm's budget is args.gpu-memory-utilization; 'vram' is for other engines"),
        ):  # fmt: skip
            if wrong:
                raise LocatedValueError((key,), message)
        if self.stop_timeout is not None and self.stop_timeout == FOREVER:
            msg = "expected a grace period such as 30s (finite: a hung engine must still stop)"
            raise LocatedValueError(("stop_timeout",), msg)
        if self.engine == "vllm":
            try:
                vllmargs.check(self.args)
            except LocatedValueError as exc:
                raise LocatedValueError(("args", *exc.subpath), str(exc)) from None
        return self

    @property
    def gpu_memory_utilization(self) -> float | None:
        found = vllmargs.lookup(self.args, "gpu-memory-utilization")
        value = found[1] if found else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return 0.9 if self.engine == "vllm" else None  # vLLM's own default

    @property
    def public_name(self) -> str | None:
        """The model name clients ask for (vLLM/command)."""
        return self.served_name or self.model


class ProfileFile(Strict):
    """One ``gpuN.yaml``: the services that share a GPU (or a tensor-parallel GPU set)."""

    gpu: GpuField = Field(description="Index, UUID 'GPU-…', a list (tensor parallel), or 'cpu'.")
    services: dict[ServiceName, ServiceSpec] = Field(
        default_factory=dict, description="Engine servers on this GPU, by unique service name."
    )

    @property
    def gpus(self) -> tuple[int | str, ...]:
        refs = self.gpu if isinstance(self.gpu, list) else [self.gpu]
        return tuple(r for r in refs if r != "cpu")

    @model_validator(mode="after")
    def _parallel_fits(self) -> ProfileFile:
        if not self.gpus:  # cpu: no GPU list to compare with
            return self
        for name, spec in self.services.items():
            problem = (
                _parallel_problem(spec.args, len(self.gpus)) if spec.engine == "vllm" else None
            )
            if problem:
                raise LocatedValueError(("services", name, "args", problem[0]), problem[1])
        return self


def _parallel_problem(args: dict[str, ArgValue], gpus: int) -> tuple[str, str] | None:
    """vLLM runs one rank per GPU: tensor-parallel-size times pipeline-parallel-size."""
    sizes: list[tuple[str, int]] = []  # (key as written, size)
    for flag in ("tensor-parallel-size", "pipeline-parallel-size"):
        found, size = vllmargs.lookup(args, flag), vllmargs.int_value(args, flag)
        if found and size and size > 1:
            sizes.append((found[0], size))
    ranks = math.prod(size for _, size in sizes)
    if ranks <= gpus:
        return None
    what = " times ".join(f"{key} {size}" for key, size in sizes)
    msg = (
        f"{what} needs {ranks} GPUs, but this profile's gpu: lists {gpus}; "
        f"allowed: 1 to {gpus} (or list more GPUs in gpu:)"
    )
    return sizes[-1][0], msg


class KeepAliveRule(Strict):
    match: str = Field(description="Glob on the model name, e.g. 'gpt-oss:*'.")
    keep_alive: Duration = Field(description="30m, 1h, forever, or 0 (unload after a request).")


class KeepAlivePolicy(Strict):
    default: Duration = Field(default=1800.0, description="keep_alive for models no rule matches.")
    mode: Literal["enforce", "floor", "observe"] = Field(
        default="enforce",
        description="enforce: client value replaced; floor: raised to the rule; observe: log only",
    )
    client_unload: Literal["deny", "allow"] = Field(
        default="deny", description="deny: a client's keep_alive 0 is rewritten (and logged)."
    )
    rules: tuple[KeepAliveRule, ...] = Field(
        default=(), description="First match wins; glob on the model name."
    )


class PressureSpec(Strict):
    warning: float = Field(
        default=0.85, gt=0, le=1, description="Used fraction of GPU memory that logs a warning."
    )
    critical: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="Used fraction at which idle, non-pinned Ollama models unload.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> PressureSpec:
        if self.warning > self.critical:
            msg = f"warning ({self.warning}) must not be above critical ({self.critical})"
            raise LocatedValueError(("warning",), msg)
        return self


class QueueSpec(Strict):
    max_waiting: int = Field(
        default=256, ge=1, description="Requests held per service while it starts; more get 503."
    )


class Policy(Strict):
    keep_alive: KeepAlivePolicy = Field(
        default=KeepAlivePolicy(), description="The one keep_alive policy for every client."
    )
    pin: tuple[str, ...] = Field(default=(), description="Models loaded at start and kept.")
    focus: tuple[str, ...] = Field(
        default=(), description="When non-empty, requests for other models are refused."
    )
    ollama_options: dict[str, ArgValue] = Field(
        default_factory=dict,
        description="Options forced on Ollama requests and pins (num_ctx...); keep them stable.",
    )
    pressure: PressureSpec = Field(
        default=PressureSpec(), description="GPU memory pressure thresholds (fractions)."
    )
    admin_routes: Literal["deny", "allow"] = Field(
        default="deny",
        description="Without gateway keys: allow /api/pull, /api/delete, /api/create … to anyone.",
    )
    evict_idle: bool = Field(
        default=True,
        description="Admission may stop idle, non-pinned services on a full GPU to start another.",
    )
    queue: QueueSpec = Field(default=QueueSpec(), description="Requests waiting for a start.")
    fallbacks: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="Models served instead when a model's service is fatal, cannot be "
        "admitted, or still loads after fallback_after: {gpt-oss:120b: [gpt-oss:20b]}.",
    )
    fallback_after: Duration | None = Field(
        default=None,
        description="Serve a fallback once a request waited this long for a load (default: never).",
    )
    warmup: tuple[str, ...] = Field(
        default=(),
        description="Ollama models loaded and asked for one token when their service is ready.",
    )

    def is_pinned(self, model: str) -> bool:
        """The one answer to "is this model pinned?" (names compared as Ollama does)."""
        return any(same_model(model, pin) for pin in self.pin)

    def fallbacks_for(self, model: str) -> tuple[str, ...]:
        """The models that may serve a request for ``model`` (names compared as Ollama does)."""
        for name, alternatives in self.fallbacks.items():
            if same_model(model, name):
                return alternatives
        return ()


class ServiceConfig(Strict):
    """A service with what the daemon resolved around it."""

    name: str
    spec: ServiceSpec
    gpus: tuple[int | str, ...]
    source: str


class Config(Strict):
    """The whole validated config directory."""

    services: dict[str, ServiceConfig] = Field(default_factory=dict)
    policy: Policy = Policy()
    policy_source: str | None = None
    # The gateway's API keys (run --gateway-keys); None: the gateway is open.
    gateway_keys: GatewayKeys | None = None
