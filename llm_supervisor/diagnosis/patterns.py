"""Every failure message the classifier knows, most specific causes first.

Wording is taken from vLLM's and Ollama's sources and from real logs in their issue
threads (see tests/data/engine_logs/SOURCES.md). vLLM has changed some messages over
versions (``models's`` became ``model's``; the estimated maximum model length was added;
config errors are now wrapped in pydantic "Value error, ..." lines), so patterns accept
the old and the new wording. ``classify`` ranks matches by the rule's tier (root cause,
context, wrapper), then the cause's place in ``model.CAUSES``; the order here only breaks
exact ties on one line (the earlier rule wins, so a specific pattern goes before a generic
one of the same cause).
"""

from __future__ import annotations

from .config_rules import CONFIG_RULES
from .memory_rules import MEMORY_RULES
from .process_rules import PROCESS_RULES
from .rules import Rule

RULES: tuple[Rule, ...] = MEMORY_RULES + CONFIG_RULES + PROCESS_RULES
