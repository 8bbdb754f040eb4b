"""llm-supervisor: keeps vLLM and Ollama servers alive and honest."""

__version__ = "0.1.0"
