"""Which argument and environment values are secrets, and how they are shown: ``***``.

The engine still gets the real value; events, logs, status, the page and metrics never do.
A name is secret when one of its words (split at ``-`` and ``_``) is or ends in key, token,
secret, password, passwd or credential(s): ``api-key``, ``HF_TOKEN``,
``AWS_SECRET_ACCESS_KEY``, ``apikey``; but not ``max-num-batched-tokens`` or ``tokenizer``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

MASK = "***"
_ENDINGS = ("key", "token", "secret", "password", "passwd", "credential", "credentials")
_WORDS = re.compile(r"[-_.\s]+")


def is_secret_name(name: str) -> bool:
    return any(word.endswith(_ENDINGS) for word in _WORDS.split(name.lower().lstrip("-")))


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``--api-key sk-1`` and ``--api-key=sk-1`` → ``--api-key ***`` / ``--api-key=***``."""
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            shown.append(MASK)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        secret = arg.startswith("-") and is_secret_name(flag)
        if secret and eq:
            shown.append(f"{flag}={MASK}")
        else:
            shown.append(arg)
            hide_next = secret
    return shown


def secret_values(*mappings: Mapping[str, object]) -> tuple[str, ...]:
    """The values to mask in an engine's own output (vLLM prints its arguments at start).
    Very short values are skipped: masking every "1" would garble the log, not protect it."""
    found = {
        str(v) for values in mappings for k, v in values.items()
        if is_secret_name(k) and v is not None and len(str(v)) >= 6
    }  # fmt: skip
    return tuple(sorted(found, key=len, reverse=True))  # longest first: no partial leftovers
