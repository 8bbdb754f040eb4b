"""Model names as Ollama compares them: the one place that decides "same model?".

Read in ollama/ollama ``types/model/name.go``: a name is ``[host/][namespace/]model[:tag]``;
``ParseName`` fills what is missing from ``registry.ollama.ai/library/?:latest``, names are
compared case-insensitively (``Name.EqualFold``), and ``DisplayShortest`` drops the default
host and namespace again. So ``llama3.2``, ``Llama3.2:latest`` and
``registry.ollama.ai/library/llama3.2`` are one model, and ``llama3.2:3b`` is another.

Config (pins) and the gateway (keep_alive rules, focus, routing) import this leaf module.
"""

from __future__ import annotations

import fnmatch

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
_GLOB = frozenset("*?[")


def canonical_model_name(name: str) -> str:
    """The shortest lower-case spelling with the tag: ``Llama3.2`` → ``llama3.2:latest``."""
    text = name.strip().lower().removeprefix("http://").removeprefix("https://")
    if not text:
        return ""
    path, _, last = text.rpartition("/")
    model, _, tag = last.partition(":")
    parts = path.split("/") if path else []
    host = parts[0] if len(parts) >= 2 else DEFAULT_HOST
    namespace = "/".join(parts[1:]) if len(parts) >= 2 else (parts[0] if parts else "")
    prefix = f"{host}/{namespace or DEFAULT_NAMESPACE}/"
    if host == DEFAULT_HOST:
        prefix = "" if namespace in ("", DEFAULT_NAMESPACE) else f"{namespace}/"
    return f"{prefix}{model}:{tag or DEFAULT_TAG}"


def same_model(a: str, b: str) -> bool:
    """Whether Ollama would load the same model for both names."""
    return canonical_model_name(a) == canonical_model_name(b)


def matches_model_pattern(model: str, pattern: str) -> bool:
    """A name is the model itself (``same_model``); a glob (``gpt-oss:*``, ``llava*``) is
    matched case-insensitively against the name as written and in its canonical form."""
    if not _GLOB & set(pattern):
        return same_model(model, pattern)
    folded = pattern.lower()
    return any(fnmatch.fnmatchcase(n, folded) for n in (model.lower(), canonical_model_name(model)))
