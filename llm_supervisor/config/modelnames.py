"""Model names compared the way Ollama compares them.

Ollama resolves ``Llama3.2`` and ``llama3.2:latest`` to the same model: names are
case-insensitive and a name without a tag means ``:latest`` (types/model/name.go ParseName
fills in the default tag; manifests are looked up case-insensitively). Rules, pins, focus,
key allow-lists and routing all compare through ``canonical_model_name`` so that a client
cannot step around a rule by spelling a name differently.
"""

from __future__ import annotations

import fnmatch


def canonical_model_name(name: str) -> str:
    """Lowercase, with ``:latest`` when the last path part carries no tag.

    Only the last part is looked at: ``registry:5000/llama3.2`` has a port, not a tag.
    """
    lowered = name.lower()
    return lowered if ":" in lowered.rsplit("/", 1)[-1] else f"{lowered}:latest"


def model_matches(model: str, pattern: str) -> bool:
    """A name or glob from the config against a client's model name, Ollama's way.

    A glob without a tag (``llava*``) matches any tag, as it always did; a plain name gets
    ``:latest`` implied on both sides.
    """
    name, lowered = canonical_model_name(model), pattern.lower()
    if "*" in lowered or "?" in lowered or "[" in lowered:
        return fnmatch.fnmatchcase(name, lowered) or fnmatch.fnmatchcase(name, f"{lowered}:*")
    return name == canonical_model_name(lowered)
