"""The config model: per-GPU profiles and the central policy.

Every model is frozen and forbids unknown keys. Frozen models compare by value, which is
what the hot-reload diff relies on.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from ..durations import parse_duration

DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": r"^(forever|-1|(\d+(\.\d+)?(ms|h|m|s))+|\d+)$"},
        {"type": "number", "minimum": -1},
    ],
    "description": "Seconds, or a duration such as 30s, 10m, 1h30m; 'forever' keeps it loaded.",
}

Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(DURATION_SCHEMA)]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kib|mib|gib|tib|kb|mb|gb|tb)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_size(value: object) -> int:
    """Bytes from ``24GiB``, ``500MB`` or a plain integer of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 24GiB, got {value!r}")
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"expected a size such as 24GiB or 500MiB, got {value!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])


ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]}),
]

ServiceName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
GpuRef = int | Annotated[str, StringConstraints(pattern=r"^(GPU-[0-9a-fA-F-]+|cpu)$")]
ArgValue = str | int | float | bool | list[str | int | float] | None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class HealthSpec(Strict):
    startup_timeout: Duration | None = Field(
        default=None, description="How long a start may take until ready (default: vllm 20m, else 2m)."
    )
    interval: Duration = Field(default=10.0, description="Liveness probe period once ready.")
    timeout: Duration = Field(default=5.0, description="Timeout of one probe request.")
    failures: int = Field(default=3, ge=1, description="Consecutive failed probes before restart.")
    ready_path: str | None = Field(
        default=None, description="HTTP path that answers 2xx once ready (engine: command)."
    )
    stable_after: Duration = Field(
        default=60.0, description="A run that stayed ready this long resets the backoff."
    )


class RestartSpec(Strict):
    max_failures: int = Field(default=5, ge=1, description="Failures within window → fatal.")
    window: Duration = Field(default=600.0, description="Window that counts failures.")
    backoff_initial: Duration = 1.0
    backoff_max: Duration = 60.0


class ServiceSpec(Strict):
    """One engine server. The launch fields decide whether a reload restarts it."""

    engine: Literal["vllm", "ollama", "command"]
    model: str | None = Field(default=None, description="vLLM: model path or HF id to serve.")
    served_name: str | None = Field(default=None, description="Name clients use; default: model.")
    models: tuple[str, ...] = Field(default=(), description="Ollama: models this server offers.")
    port: int = Field(ge=1, le=65535, description="The engine binds 127.0.0.1:port.")
    command: tuple[str, ...] | None = Field(
        default=None, min_length=1, description="Executable and leading args (argv, no shell)."
    )
    args: dict[str, ArgValue] = Field(
        default_factory=dict, description="Engine flags: {max-model-len: 16384} → --max-model-len 16384"
    )
    env: dict[str, str] = Field(default_factory=dict)
    start: Literal["boot", "on-demand"] = "boot"
    health: HealthSpec = HealthSpec()
    restart: RestartSpec = RestartSpec()
    stop_timeout: Duration | None = Field(
        default=None, description="Grace after SIGTERM before SIGKILL (default: vllm 30s, else 10s)."
    )
    vram: ByteSize | None = Field(
        default=None, description="Declared GPU memory budget (non-vLLM engines), e.g. 40GiB."
    )

    @field_validator("args")
    @classmethod
    def _known_vllm_arg_types(cls, args: dict[str, ArgValue]) -> dict[str, ArgValue]:
        for key, kind in (("max-model-len", int), ("tensor-parallel-size", int)):
            value = args.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
                raise ValueError(f"{key}: expected an integer, got {value!r}")
        util = args.get("gpu-memory-utilization")
        if util is not None and (
            isinstance(util, bool) or not isinstance(util, int | float) or not 0 < util <= 1
        ):
            raise ValueError(f"gpu-memory-utilization: expected a number in (0, 1], got {util!r}")
        return args

    @model_validator(mode="after")
    def _engine_requirements(self) -> ServiceSpec:
        if self.engine == "vllm" and not self.model:
            raise ValueError("engine vllm needs 'model' (a path or Hugging Face id)")
        if self.engine == "command" and not self.command:
            raise ValueError("engine command needs 'command' (the server's argv)")
        return self

    @property
    def gpu_memory_utilization(self) -> float | None:
        value = self.args.get("gpu-memory-utilization")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return 0.9 if self.engine == "vllm" else None  # vLLM's own default

    @property
    def public_name(self) -> str | None:
        """The model name clients ask for (vLLM/command)."""
        return self.served_name or self.model


class ProfileFile(Strict):
    """One ``gpuN.yaml``: the services that share a GPU (or a tensor-parallel GPU set)."""

    gpu: GpuRef | list[GpuRef] = Field(description="Index, UUID 'GPU-…', a list, or 'cpu'.")
    services: dict[ServiceName, ServiceSpec] = Field(default_factory=dict)

    @property
    def gpus(self) -> tuple[int | str, ...]:
        refs = self.gpu if isinstance(self.gpu, list) else [self.gpu]
        return tuple(r for r in refs if r != "cpu")


class KeepAliveRule(Strict):
    match: str = Field(description="Glob on the model name, e.g. 'gpt-oss:*'.")
    keep_alive: Duration


class KeepAlivePolicy(Strict):
    default: Duration = Field(default=1800.0, description="keep_alive for models no rule matches.")
    mode: Literal["enforce", "floor", "observe"] = "enforce"
    client_unload: Literal["deny", "allow"] = "deny"
    rules: tuple[KeepAliveRule, ...] = ()


class PressureSpec(Strict):
    warning: float = Field(default=0.85, gt=0, le=1)
    critical: float = Field(default=0.95, gt=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> PressureSpec:
        if self.warning > self.critical:
            raise ValueError("pressure.warning must not be above pressure.critical")
        return self


class Policy(Strict):
    keep_alive: KeepAlivePolicy = KeepAlivePolicy()
    pin: tuple[str, ...] = Field(default=(), description="Models loaded at start and kept.")
    focus: tuple[str, ...] = Field(
        default=(), description="When non-empty, requests for other models are refused."
    )
    ollama_options: dict[str, ArgValue] = Field(default_factory=dict)
    pressure: PressureSpec = PressureSpec()
    evict_idle: bool = Field(
        default=True,
        description="Admission may stop idle, non-pinned services on a full GPU to start another.",
    )


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
