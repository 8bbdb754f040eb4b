"""Memory failures: KV cache too small, GPU memory taken by others, GPU and host OOM."""

from __future__ import annotations

import math

from . import model as c
from .rules import OLLAMA, VLLM, Found, Rule, by_engine, fixed, rx


def _kv_hint(found: Found) -> str:
    numbers = found.numbers
    fit = numbers.get("max_tokens_fit")
    if fit is None and "kv_needed_gib" in numbers and numbers["kv_needed_gib"]:
        # Older vLLM did not print the estimate; KV memory grows linearly with length.
        ratio = numbers["kv_available_gib"] / numbers["kv_needed_gib"]
        fit = math.floor(numbers["max_model_len"] * ratio)
        numbers["max_tokens_fit_estimate"] = fit
        return f"set max-model-len to about {fit} or lower, or raise gpu-memory-utilization"
    if fit is None and "max_model_len" in numbers:
        # The message was cut (a wrapped terminal line): only the configured length is known.
        return (
            f"the KV cache cannot hold one request of max-model-len {numbers['max_model_len']}: "
            "lower max-model-len, or raise gpu-memory-utilization"
        )
    if fit is None:
        return "raise gpu-memory-utilization, or lower max-model-len"
    return f"set max-model-len to {fit} or lower, or raise gpu-memory-utilization"


def _free_memory_hint(found: Found) -> str:
    free, total = found.numbers.get("free_gib"), found.numbers.get("total_gib")
    if not free or not total:
        return "other processes hold GPU memory: free it or lower gpu-memory-utilization"
    # One point below the free share leaves room for the CUDA context of the new process.
    fits = math.floor(free / total * 100 - 1) / 100
    found.numbers["suggested_gpu_memory_utilization"] = fits
    return (
        f"only {free:g} of {total:g} GiB are free: stop whoever holds the GPU "
        f"(llm-supervisor gpus) or set gpu-memory-utilization to {fits:.2f} or lower"
    )


def _cpu_free_memory_hint(found: Found) -> str:
    """vLLM's CPU backend reserves gpu-memory-utilization x the node's RAM at startup."""
    free, total = found.numbers.get("free_gib"), found.numbers.get("total_gib")
    node = found.text("node", "0")
    if not free or not total:
        return (
            "other processes hold the RAM vLLM's CPU backend wants: free it or lower "
            "gpu-memory-utilization (on CPU it is the share of RAM vLLM reserves)"
        )
    fits = math.floor(free / total * 100 - 1) / 100
    if fits <= 0:
        return (
            f"only {free:g} of {total:g} GiB of RAM on node {node} are free: stop other "
            "processes first (gpu-memory-utilization sets vLLM's share of RAM on the CPU backend)"
        )
    found.numbers["suggested_gpu_memory_utilization"] = fits
    return (
        f"only {free:g} of {total:g} GiB of RAM on node {node} are free: set "
        f"gpu-memory-utilization to {fits:.2f} or lower (on the CPU backend it is the share of "
        "RAM vLLM reserves) or stop other processes"
    )


def _cpu_kv_memory_hint(found: Found) -> str:
    free, wanted = found.numbers.get("free_gib"), found.numbers.get("kv_requested_gib")
    node = found.text("node", "0")
    if free is None or wanted is None:
        return "the CPU backend's KV cache does not fit in free RAM: lower VLLM_CPU_KVCACHE_SPACE"
    return (
        f"the KV cache wants {wanted:g} GiB but only {free:g} GiB of RAM on node {node} are "
        f"free: set VLLM_CPU_KVCACHE_SPACE to {math.floor(free)} (GiB) or less, or stop other "
        "processes"
    )


def _backend_buffer_hint(_found: Found) -> str:
    return (
        "the model does not fit in GPU plus host memory: use a smaller model or quantization, "
        "lower num_ctx, or free RAM (stop other models)"
    )


def _max_len_hint(found: Found) -> str:
    derived = found.numbers.get("derived_max_model_len")
    return (
        f"set max-model-len to {derived} or lower (the model's config.json allows {derived}); "
        "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 overrides this at your own risk"
    )


def _host_oom_hint(found: Found) -> str:
    need, have = found.numbers.get("required_gib"), found.numbers.get("available_gib")
    prefix = f"needs {need:g} GiB of RAM, {have:g} GiB free: " if need and have else ""
    return prefix + "not enough host memory; stop other models or use a smaller quantization"


_VLLM_OOM, _OLLAMA_OOM = (
    "lower gpu-memory-utilization, max-model-len or max-num-seqs, and check that no other "
    "process holds GPU memory (llm-supervisor gpus)",
    "lower num_ctx or OLLAMA_NUM_PARALLEL, unload other models, and check that no other "
    "process holds GPU memory (llm-supervisor gpus)",
)
_CUDA_OOM_ADVICE = by_engine(_VLLM_OOM, _OLLAMA_OOM)
_GGML_OOM_ADVICE = by_engine(_VLLM_OOM, _OLLAMA_OOM, default="ollama")


def _oom_numbers(found: Found) -> str:
    """What the allocator said it wanted and had, as a prefix for the advice."""
    numbers = found.numbers
    if "buffer_bytes" in numbers:
        numbers["buffer_gib"] = round(numbers["buffer_bytes"] / 2**30, 3)
    wanted = numbers.get("tried_alloc_gib", numbers.get("alloc_gib", numbers.get("buffer_gib")))
    free, total = numbers.get("gpu_free_gib"), numbers.get("gpu_total_gib")
    device = found.text("gpu") or found.text("device")
    where = f"GPU {device}" if device else "the GPU"
    if wanted is not None and free is not None and total:
        asked = f"{free:g} of {total:g} GiB free, {wanted:g} GiB more asked"
        return f"{where} ran out of memory ({asked}): "
    if wanted is not None:
        return f"{where} ran out of memory ({wanted:g} GiB could not be allocated): "
    return "the GPU ran out of memory: "


def _cuda_oom_hint(found: Found) -> str:
    return _oom_numbers(found) + _CUDA_OOM_ADVICE(found)


def _ggml_oom_hint(found: Found) -> str:
    return _oom_numbers(found) + _GGML_OOM_ADVICE(found)


MEMORY_RULES: tuple[Rule, ...] = (
    Rule(
        c.KV_CACHE_INSUFFICIENT,
        ("to serve at least one request",),
        rx(
            r"To serve at least one request with the models?'s max seq len"
            r" \((?P<max_model_len>\d+)\)"
            # A terminal may wrap the rest onto the next line; the length alone still counts.
            r"(?:,? \(?(?P<kv_needed_gib>[\d.]+) GiB KV cache is needed, which is larger than"
            r" the available KV cache memory \((?P<kv_available_gib>[\d.]+) GiB\)\.?"
            r"(?: Based on the available memory,? the estimated maximum model length is"
            r" (?P<max_tokens_fit>\d+))?)?"
        ),
        _kv_hint,
        VLLM,
    ),
    Rule(
        c.KV_CACHE_INSUFFICIENT,
        ("stored in kv cache",),
        rx(
            r"max seq len \((?P<max_model_len>\d+)\) is larger than the maximum number of tokens"
            r" that can be stored in KV cache \((?P<max_tokens_fit>\d+)\)"
        ),
        _kv_hint,
        VLLM,
    ),
    Rule(
        c.KV_CACHE_INSUFFICIENT,
        ("no available memory for the cache blocks",),
        rx(r"No available memory for the cache blocks"),
        fixed(
            "no memory is left for the KV cache after loading the weights: raise "
            "gpu-memory-utilization or use a smaller (quantized) model"
        ),
        VLLM,
    ),
    Rule(
        c.INSUFFICIENT_FREE_MEMORY,
        ("on startup is less than desired",),
        rx(
            r"Free memory on device(?: (?P<device>\S+))?"
            r" \((?P<free_gib>[\d.]+)/(?P<total_gib>[\d.]+)"
            r" GiB\) on startup is less than desired GPU memory utilization"
            r" \((?P<gpu_memory_utilization>[\d.]+), (?P<requested_gib>[\d.]+) GiB\)"
        ),
        _free_memory_hint,
        VLLM,
    ),
    Rule(  # vLLM's CPU backend: gpu-memory-utilization is a share of the NUMA node's RAM
        c.INSUFFICIENT_FREE_MEMORY,
        ("less than desired cpu memory utilization",),
        rx(
            r"Available memory on node (?P<node>\d+) \((?P<free_gib>[\d.]+)/(?P<total_gib>[\d.]+)"
            r" GiB\) on startup is less than desired CPU memory utilization"
            r" \((?P<gpu_memory_utilization>[\d.]+), (?P<requested_gib>[\d.]+) GiB\)"
        ),
        _cpu_free_memory_hint,
        VLLM,
    ),
    Rule(  # the CPU backend again, when the KV cache is sized after the weights are loaded
        c.INSUFFICIENT_FREE_MEMORY,
        ("less than requested memory for kv",),
        rx(
            r"Available memory on node (?P<node>\d+) \((?P<free_gib>[\d.]+)/(?P<total_gib>[\d.]+)"
            r" GiB\) on kv cache allocation is less than requested memory for kv"
            r" \((?P<kv_requested_gib>[\d.]+)/(?P<requested_gib>[\d.]+) GiB\)"
        ),
        _cpu_kv_memory_hint,
        VLLM,
    ),
    Rule(
        c.MAX_MODEL_LEN_TOO_LARGE,
        ("user-specified max_model_len",),
        rx(
            r"User-specified max_model_len \((?P<max_model_len>\d+)\) is greater than the derived"
            r" max_model_len \((?P<key>[\w.]+)=(?P<derived_max_model_len>\d+)"
        ),
        _max_len_hint,
        VLLM,
    ),
    Rule(
        c.CUDA_OOM,
        ("out of memory",),
        rx(
            r"CUDA out of memory\. Tried to allocate (?P<tried_alloc_gib__size>[\d.]+ [KMG]iB)\."
            r" GPU (?P<gpu>\d+) has a total capacity of (?P<gpu_total_gib__size>[\d.]+ [KMG]iB)"
            r" of which (?P<gpu_free_gib__size>[\d.]+ [KMG]iB) is free"
        ),
        _cuda_oom_hint,
    ),
    Rule(
        c.CUDA_OOM,
        ("out of memory", "cudaerrormemoryallocation"),
        rx(
            r"OutOfMemoryError|CUDA error: out of memory|CUDA out of memory|HIP out of memory"
            r"|cudaErrorMemoryAllocation"
        ),
        _cuda_oom_hint,
    ),
    Rule(
        c.CUDA_OOM,
        (
            "malloc failed",
            "to allocate cuda",
            "to allocate rocm",
            "to allocate metal",
            "out of device memory",
        ),
        rx(
            # llama.cpp's allocator, as Ollama's runner prints it
            r"allocating (?P<alloc_gib__size>[\d.]+ [KMG]iB) on device (?P<device>\d+):"
            r" (?:cuda|hip)Malloc failed"
            r"|cudaMalloc failed|hipMalloc failed|out of device memory"
            r"|(?:unable|failed) to allocate (?:CUDA|ROCm|Metal)\d* buffer"
            r"(?: of size (?P<buffer_bytes>\d+))?"
        ),
        _ggml_oom_hint,
    ),
    Rule(
        c.HOST_OOM,
        ("more system memory",),
        rx(
            r"model requires more system memory \((?P<required_gib__size>[\d.]+ ?[KMGT]?i?B)\)"
            r" than is available \((?P<available_gib__size>[\d.]+ ?[KMGT]?i?B)\)"
        ),
        _host_oom_hint,
    ),
    Rule(  # llama.cpp could place the weights neither on the GPU nor in RAM (Ollama #5958)
        c.HOST_OOM,
        ("unable to allocate backend buffer",),
        rx(r"unable to allocate backend buffer"),
        _backend_buffer_hint,
        OLLAMA,
    ),
    Rule(
        c.HOST_OOM,
        ("cpu buffer", "can't allocate memory", "cannot allocate memory", "out of memory: kill"),
        rx(
            r"(?:unable|failed) to allocate CPU buffer|DefaultCPUAllocator: can't allocate memory"
            r"|Cannot allocate memory|Out of memory: Killed process"
        ),
        _host_oom_hint,
    ),
)
