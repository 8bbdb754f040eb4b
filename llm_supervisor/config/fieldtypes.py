"""Field types of the config model: durations, sizes, GPU references, engine flags.

Each type validates with a message written for the operator and exports a JSON schema that
editors understand (what the YAML may contain, not the Python type it becomes).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StringConstraints, WithJsonSchema

from ..durations import parse_duration
from .yamlload import Yaml11Number


class LocatedValueError(ValueError):
    """A validation error about a key below the validated value (``args.max-model-len``).

    Pydantic places a validator's error at the validated field; the loader appends ``subpath``
    so the message points at the line of the key that is actually wrong.
    """

    def __init__(self, subpath: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.subpath = subpath


DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "string",
            "pattern": r"^(forever|inf|infinite|-1|(\d+(\.\d+)?(ms|h|m|s))+|\d+(\.\d+)?)$",
        },
        {"type": "number", "minimum": -1},
    ],
    "description": "Seconds, or a duration such as 30s, 10m, 1h30m; 'forever' keeps it loaded.",
}


def yaml11_trap(value: object, what: str, fixes: str) -> None:
    """Refuse a number YAML 1.1 read from an octal or base-60 form (``011434``, ``1:30``).

    ``fixes`` says what to write instead; ``{digits}`` in it is the number as written
    without its leading zeros.
    """
    if isinstance(value, Yaml11Number):
        digits = value.raw.lstrip("+-0").replace("_", "") or "0"
        raise ValueError(
            f"expected {what}, got {value.raw}, which YAML 1.1 reads as the {value.form} "
            f"number {value}; write {fixes.format(digits=digits, raw=value.raw)}"
        )


def _sexagesimal_fixes(raw: str) -> str:
    parts = raw.split(":")
    if len(parts) == 2:
        return f"{parts[0]}m{parts[1]}s or {parts[0]}h{parts[1]}m, whichever you mean"
    return "the duration with units, such as 1h30m or 90s"


def _duration(value: object) -> float:
    if isinstance(value, Yaml11Number):
        fixes = _sexagesimal_fixes(value.raw) if value.form == "base-60" else "{digits}"
        yaml11_trap(value, "a duration", fixes)
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_duration), WithJsonSchema(DURATION_SCHEMA)]


def _port(value: object) -> object:
    yaml11_trap(value, "a port", "{digits} without the leading zero")
    if isinstance(value, str) and re.fullmatch(r"0\d+", value.strip()):
        digits = value.strip().lstrip("0") or "0"
        raise ValueError(
            f"expected a port, got {value.strip()}: a leading zero makes a number octal in "
            f"YAML 1.1 (011434 is 4892); write {digits}"
        )
    return value


Port = Annotated[int, Field(ge=1, le=65535), BeforeValidator(_port)]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kib|mib|gib|tib|kb|mb|gb|tb)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_size(value: object) -> int:
    """Bytes from ``24GiB``, ``500MB`` or a plain integer of bytes."""
    yaml11_trap(value, "a size such as 24GiB", "{digits} without the leading zero, or 24GiB")
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 24GiB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"expected a size such as 24GiB or 500MiB, got {value!r}")
    size = float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()]
    if not size < 2**60:  # also catches inf from absurdly long digit strings
        raise ValueError(f"size {value!r} is larger than any GPU")
    return int(size)


ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]}),
]

_SERVICE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def _service_name(value: object) -> object:
    # Names become log file names and URL path parts: no spaces, no slashes.
    if isinstance(value, str) and not re.fullmatch(_SERVICE_NAME, value):
        raise ValueError(
            f"invalid service name {value!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


ServiceName = Annotated[
    str, StringConstraints(pattern=_SERVICE_NAME), BeforeValidator(_service_name)
]

_GPU_NAME = r"^(GPU-[0-9a-fA-F-]+|cpu)$"
_GPU_REF_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": _GPU_NAME}]
}
GPU_SCHEMA: dict[str, Any] = {
    "anyOf": [*_GPU_REF_SCHEMA["anyOf"], {"type": "array", "items": _GPU_REF_SCHEMA, "minItems": 1}]
}


def _gpu_ref(value: object) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, str) and re.fullmatch(_GPU_NAME, value):
        return value
    raise ValueError(f"expected a GPU index (0, 1, ...), a UUID 'GPU-...' or 'cpu', got {value!r}")


def parse_gpu_field(value: object) -> int | str | list[int | str]:
    """``gpu:`` is one reference or a tensor-parallel list of distinct GPUs."""
    if not isinstance(value, list):
        return _gpu_ref(value)
    if not value:
        raise ValueError("expected at least one GPU in the list")
    refs: list[int | str] = []
    for i, item in enumerate(value):
        try:
            ref = _gpu_ref(item)
        except ValueError as exc:
            raise LocatedValueError((i,), str(exc)) from None
        if ref in refs:
            raise LocatedValueError((i,), f"GPU {ref!r} is listed twice")
        if refs and "cpu" in (ref, refs[0]):
            raise LocatedValueError((i,), "'cpu' cannot be combined with GPUs")
        refs.append(ref)
    return refs


GpuField = Annotated[
    int | str | list[int | str], BeforeValidator(parse_gpu_field), WithJsonSchema(GPU_SCHEMA)
]


def _arg_value(value: object) -> object:
    """Engine flags are scalars or flat lists; nested structures cannot become argv."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, dict | list) or not isinstance(item, str | int | float | None):
            kind = "a mapping" if isinstance(item, dict) else type(item).__name__
            raise ValueError(
                f"expected a string, number, boolean or a flat list of them, got {kind}"
            )
        if isinstance(item, bool | None) and isinstance(value, list):
            raise ValueError(f"list items must be strings or numbers, got {item!r}")
        # --max-num-seqs 0123 would reach the engine as 83
        yaml11_trap(item, "a flag value", "{digits}, or '{raw}' (quoted) to pass it as written")
    return value


ArgValue = Annotated[
    str | int | float | bool | list[str | int | float] | None, BeforeValidator(_arg_value)
]


def _env_value(value: object) -> object:
    # Integers are unambiguous (CUDA_DEVICE_ORDER: 0); booleans and floats are YAML surprises,
    # and so are octal and base-60 forms (UMASK: 0022 would become "18").
    yaml11_trap(value, "a string", "'{raw}' (quoted, as the text you mean)")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, bool):
        raise ValueError(f"expected a string, got the YAML boolean {str(value).lower()}; quote it")
    if isinstance(value, float) or value is None:
        raise ValueError(f"expected a string, got {value!r}; quote it")
    return value


EnvValue = Annotated[str, BeforeValidator(_env_value)]


def _env_name(value: object) -> object:
    # execve() splits "NAME=value" at the first "=": "A=B: x" would set A to "B=x", and
    # a NUL ends the C string early. The kernel takes the rest; so does the daemon.
    if isinstance(value, str):
        what = "is empty" if not value else "contains '='" if "=" in value else ""
        what = what or ("contains a NUL character" if "\0" in value else "")
        if what:
            raise ValueError(
                f"environment variable name {value!r} {what}; a name is any text without '=' "
                "or NUL, usually LETTERS_DIGITS_AND_UNDERSCORES"
            )
    return value


EnvName = Annotated[str, BeforeValidator(_env_name)]
