"""Generate a tiny random-weight Llama (config, safetensors, fast tokenizer) for the CPU vLLM.

Usage (with the vLLM venv's python, which has torch, transformers and tokenizers):
    python tests/vllm_cpu/make_tiny_model.py [DIR]
DIR defaults to $LLM_SUPERVISOR_VLLM_MODEL or ~/.cache/llm-supervisor/tiny-llama.
Prints DIR. Nothing is downloaded. The output is deterministic (fixed seed, tokenizer trained
on a fixed corpus) and cached: a matching stamp file makes the script return at once.

Shape limits found with vllm-cpu 0.32.0: head_dim 16 is rejected by the CPU attention kernels,
so the model uses hidden 256 with 4 heads (head_dim 64). max_position_embeddings is 2048, so
`--max-model-len 4096` is the "value the model cannot take" in tests.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

RECIPE = "tiny-llama recipe=2 vocab=512 hidden=256 heads=4 layers=2 maxpos=2048 bf16 seed=0\n"
STAMP_NAME = ".llm-supervisor-stamp"
MAX_POSITIONS = 2048
VOCAB = 512
SPECIAL = ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "The supervisor starts the engine and waits until the model answers.",
    "A tiny model with random weights says nothing useful, quickly.",
    "Hello world, this is a test of the CPU build of vLLM.",
    "Keep alive for thirty minutes unless the policy says otherwise.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
    "Restarts back off exponentially with jitter and a cap.",
]


def default_dir() -> Path:
    default = Path.home() / ".cache" / "llm-supervisor" / "tiny-llama"
    return Path(os.environ.get("LLM_SUPERVISOR_VLLM_MODEL") or default)


def is_ready(target: Path) -> bool:
    stamp = target / STAMP_NAME
    return stamp.exists() and stamp.read_text() == RECIPE


def build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Byte-level BPE: every input string is encodable, so no <unk> surprises in tests.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
    )
    fast.save_pretrained(out)


def build_model(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,  # the trained tokenizer has fewer; vLLM only needs >=
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)


def make(target: Path) -> Path:
    if is_ready(target):
        return target
    print(f"make_tiny_model: writing a tiny random-weight Llama to {target}", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a crash never leaves a half model that looks done.
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build_tokenizer(tmp)
        build_model(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the daemon may run as another user
        (tmp / STAMP_NAME).write_text(RECIPE)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main() -> int:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else default_dir()
    print(make(target.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
