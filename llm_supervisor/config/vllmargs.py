"""vLLM's flags as the daemon reads them: either spelling, and the numeric ones checked.

vLLM's argument parser (``FlexibleArgumentParser``) turns ``_`` into ``-`` in a flag's name
up to its first ``.``, so ``max_model_len`` and ``max-model-len`` are one flag. Everything
here that looks a flag up accepts both; a service that writes both is an error, because one
of the two values would silently lose.

The numeric flags whose mistakes cost a model load are checked the way vLLM parses them
(``vllm/engine/arg_utils.py``, ``vllm/utils/argparse_utils.py``): ``max-model-len`` and
``max-num-batched-tokens`` take human-readable integers (``16k`` = 16,000, ``16K`` =
16,384; ``max-model-len`` also ``auto`` / ``-1``), the parallel sizes and ``max-num-seqs``
plain integers >= 1, ``gpu-memory-utilization`` a fraction in (0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from .fieldtypes import LocatedValueError

_HUMAN_INT = re.compile(r"(\d+(?:\.\d+)?)([kKmMgGtT])")
_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def canonical(key: str) -> str:
    """The name vLLM sees: ``max_model_len`` → ``max-model-len`` (before the first dot)."""
    head, dot, rest = key.partition(".")
    return head.replace("_", "-") + dot + rest


def lookup(args: Mapping[str, object], flag: str) -> tuple[str, object] | None:
    """The key as written and the value of ``flag`` (dashed) under either spelling."""
    for key, value in args.items():
        if canonical(key) == flag:
            return key, value
    return None


def respell(text: str, args: Mapping[str, object]) -> str:
    """Write the flags named in ``text`` (a hint) the way this service's profile does."""
    for key in args:
        if key != canonical(key):
            text = text.replace(canonical(key), key)
    return text


def check(args: Mapping[str, object]) -> None:
    """Raise LocatedValueError (subpath: the key as written) at the first bad flag."""
    seen: dict[str, str] = {}
    for key, value in args.items():
        flag = canonical(key)
        if flag in seen:
            msg = (
                f"{seen[flag]!r} and {key!r} are the same vLLM flag (vLLM reads '_' as '-');"
                " keep one"
            )
            raise LocatedValueError((key,), msg)
        seen[flag] = key
        problem = _CHECKS[flag](value) if flag in _CHECKS and value is not None else None
        if problem:
            raise LocatedValueError((key,), problem)


def int_value(args: Mapping[str, object], flag: str) -> int | None:
    """A checked integer flag's value (``16k`` → 16000), None when absent or ``auto``."""
    found = lookup(args, flag)
    if found is None:
        return None
    number = _as_int(found[1], human=True)
    return number if number is not None and number >= 1 else None


def _got(value: object) -> str:
    if isinstance(value, bool):
        return f"the YAML boolean {str(value).lower()}"
    return repr(value)


def _as_int(value: object, *, human: bool) -> int | None:
    """vLLM's ``int`` / ``human_readable_int`` on the value's text; None if it refuses."""
    if isinstance(value, bool | float):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    match = _HUMAN_INT.fullmatch(text) if human else None
    if match:
        number, suffix = match.groups()
        if suffix in _DECIMAL:
            return int(float(number) * _DECIMAL[suffix])
        return int(number) * _BINARY[suffix] if number.isdigit() else None
    return int(text) if re.fullmatch(r"[-+]?\d+", text) else None


def _positive_int(value: object) -> str | None:
    number = _as_int(value, human=False)
    if number is None or number < 1:
        return f"expected an integer >= 1, got {_got(value)}"
    return None


def _human_int(allow_auto: bool) -> Callable[[object], str | None]:
    def check_one(value: object) -> str | None:
        if allow_auto and (value == -1 or str(value).strip().lower() in ("auto", "-1")):
            return None
        number = _as_int(value, human=True)
        if number is None or number < 1:
            auto = ", or auto" if allow_auto else ""
            return (
                "expected a positive integer such as 16384, 16k (16,000) or 16K (16,384)"
                f"{auto}; got {_got(value)}"
            )
        return None

    return check_one


def _fraction(value: object) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1:
        return None  # NaN fails the comparison
    return f"expected a fraction of GPU memory in (0, 1], e.g. 0.85, got {_got(value)}"


_CHECKS: dict[str, Callable[[object], str | None]] = {
    "gpu-memory-utilization": _fraction,
    "max-model-len": _human_int(allow_auto=True),
    "max-num-batched-tokens": _human_int(allow_auto=False),
    "max-num-seqs": _positive_int,
    "tensor-parallel-size": _positive_int,
    "pipeline-parallel-size": _positive_int,
    "data-parallel-size": _positive_int,
}
