"""The mistakes operators really make, caught by `check` before they cost a model load.

Same style as test_config_check.py: a broken directory in, the exact compiler-style line out.
Each table is one class of mistake (issue #18).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llm_supervisor.cli import EX_CONFIG
from llm_supervisor.config import vllmargs
from llm_supervisor.config.load import MAX_FILE_BYTES, load_config

from .bigconfig import big_profile
from .test_config_check import OLLAMA, VLLM, Case, error_line, run_check, write_dir

TP2 = VLLM.replace("gpu: 0", "gpu: [0, 1]")


def _args(text: str, base: str = VLLM) -> dict[str, str | bytes]:
    return {"gpu0.yaml": base + "    args: {" + text + "}\n"}


def _health(text: str) -> dict[str, str | bytes]:
    return {"gpu0.yaml": VLLM + "    health: {" + text + "}\n"}


FLAG_SPELLINGS: dict[str, Case] = {
    "both_spellings_of_one_flag": Case(
        _args("max_model_len: 8192, max-model-len: 4096"), "gpu0.yaml", 7,
        "services.a.args.max-model-len",
        "'max_model_len' and 'max-model-len' are the same vLLM flag (vLLM reads '_' as '-'); "
        "keep one",
    ),
    "underscore_utilization_above_one": Case(
        _args("gpu_memory_utilization: 2"), "gpu0.yaml", 7,
        "services.a.args.gpu_memory_utilization",
        "expected a fraction of GPU memory in (0, 1], e.g. 0.85, got 2",
    ),
    "underscore_max_model_len_not_a_number": Case(
        _args("max_model_len: 16q"), "gpu0.yaml", 7, "services.a.args.max_model_len",
        "expected a positive integer such as 16384, 16k (16,000) or 16K (16,384), or auto; "
        "got '16q'",
    ),
    "binary_suffix_with_decimals": Case(
        _args("max-model-len: 1.5K"), "gpu0.yaml", 7, "services.a.args.max-model-len",
        "got '1.5K'",
    ),
    "max_model_len_zero": Case(
        _args("max-model-len: 0"), "gpu0.yaml", 7, "services.a.args.max-model-len", "got 0",
    ),
    "tensor_parallel_size_zero": Case(
        _args("tensor_parallel_size: 0", TP2), "gpu0.yaml", 7,
        "services.a.args.tensor_parallel_size", "expected an integer >= 1, got 0",
    ),
    "max_num_seqs_float": Case(
        _args("max-num-seqs: 2.5"), "gpu0.yaml", 7, "services.a.args.max-num-seqs",
        "expected an integer >= 1, got 2.5",
    ),
    "max_num_batched_tokens_boolean": Case(
        _args("max_num_batched_tokens: yes"), "gpu0.yaml", 7,
        "services.a.args.max_num_batched_tokens", "got the YAML boolean true",
    ),
    "underscore_spelling_counts_in_the_gpu_sum": Case(
        {
            "gpu0.yaml": VLLM + "    args: {gpu_memory_utilization: 0.6}\n",
            "gpu0b.yaml": VLLM.replace("a:", "b:").replace("8001", "8002")
            + "    args: {gpu-memory-utilization: 0.5}\n",
        },
        "gpu0b.yaml", 3, "services.b",
        "GPU 0 is overcommitted: gpu-memory-utilization a 0.60 + b 0.50 = 1.10",
    ),
}  # fmt: skip

YAML11_NUMBERS: dict[str, Case] = {
    "octal_port": Case(
        {"gpu0.yaml": VLLM.replace("port: 8001", "port: 011434")}, "gpu0.yaml", 6,
        "services.a.port",
        "expected a port, got 011434, which YAML 1.1 reads as the octal number 4892; "
        "write 11434 without the leading zero",
    ),
    "leading_zero_port_that_is_no_octal": Case(
        {"gpu0.yaml": VLLM.replace("port: 8001", "port: 08000")}, "gpu0.yaml", 6,
        "services.a.port",
        "expected a port, got 08000: a leading zero makes a number octal in YAML 1.1 "
        "(011434 is 4892); write 8000",
    ),
    "sexagesimal_duration": Case(
        _health("startup_timeout: 1:30"), "gpu0.yaml", 7, "services.a.health.startup_timeout",
        "expected a duration, got 1:30, which YAML 1.1 reads as the base-60 number 90; "
        "write 1m30s or 1h30m, whichever you mean",
    ),
    "octal_duration": Case(
        {"gpu0.yaml": VLLM + "    stop_timeout: 010\n"}, "gpu0.yaml", 7,
        "services.a.stop_timeout",
        "expected a duration, got 010, which YAML 1.1 reads as the octal number 8; write 10",
    ),
    "octal_keep_alive_in_policy": Case(
        {"gpu0.yaml": VLLM, "policy.yaml": "keep_alive: {default: 0600}\n"}, "policy.yaml", 1,
        "keep_alive.default", "got 0600, which YAML 1.1 reads as the octal number 384",
    ),
    "octal_env_value": Case(
        {"gpu0.yaml": VLLM + "    env: {UMASK: 0022}\n"}, "gpu0.yaml", 7, "services.a.env.UMASK",
        "expected a string, got 0022, which YAML 1.1 reads as the octal number 18; "
        "write '0022' (quoted, as the text you mean)",
    ),
    "octal_engine_flag": Case(
        _args("max-num-seqs: 0123"), "gpu0.yaml", 7, "services.a.args.max-num-seqs",
        "expected a flag value, got 0123, which YAML 1.1 reads as the octal number 83; "
        "write 123, or '0123' (quoted) to pass it as written",
    ),
    "octal_size": Case(
        {"gpu0.yaml": OLLAMA + "    vram: 040\n"}, "gpu0.yaml", 7, "services.o.vram",
        "expected a size such as 24GiB, got 040, which YAML 1.1 reads as the octal number 32",
    ),
}  # fmt: skip

ENV_NAMES: dict[str, Case] = {
    "empty_env_name": Case(
        {"gpu0.yaml": VLLM + '    env: {"": x}\n'}, "gpu0.yaml", 7, "services.a.env.",
        "environment variable name '' is empty",
    ),
    "env_name_with_equals": Case(
        {"gpu0.yaml": VLLM + "    env: {A=B: x}\n"}, "gpu0.yaml", 7, "services.a.env.A=B",
        "environment variable name 'A=B' contains '='",
    ),
    "env_name_with_nul": Case(
        {"gpu0.yaml": VLLM + '    env: {"A\\0B": x}\n'}, "gpu0.yaml", 7, "services.a.env.A\0B",
        "contains a NUL character",
    ),
}  # fmt: skip

WRONG_FILE: dict[str, Case] = {
    "policy_key_in_profile": Case(
        {"gpu0.yaml": VLLM + "pin: [m]\n"}, "gpu0.yaml", 7, "pin",
        "unknown key 'pin': a policy key; it belongs in policy.yaml, not in a profile",
    ),
    "keep_alive_in_profile": Case(
        {"gpu0.yaml": VLLM + "keep_alive: {default: 1h}\n"}, "gpu0.yaml", 7, "keep_alive",
        "belongs in policy.yaml",
    ),
    "profile_saved_as_policy": Case(
        {"gpu1.yaml": OLLAMA, "policy.yaml": VLLM}, "policy.yaml", 1, "gpu",
        "unknown key 'gpu': a profile key, but this file is the policy (policy.yaml); "
        "save the profile under another name, such as gpu0.yaml",
    ),
}  # fmt: skip

IMPOSSIBLE_NUMBERS: dict[str, Case] = {
    "interval_zero": Case(
        _health("interval: 0"), "gpu0.yaml", 7, "services.a.health.interval",
        "expected a duration above 0 and below forever, e.g. 10s, got 0s",
    ),
    "interval_forever": Case(
        _health("interval: -1"), "gpu0.yaml", 7, "services.a.health.interval",
        "got forever",
    ),
    "timeout_zero": Case(
        _health("timeout: 0"), "gpu0.yaml", 7, "services.a.health.timeout",
        "expected a duration above 0 and below forever, e.g. 10s, got 0s",
    ),
    "timeout_not_below_interval": Case(
        _health("interval: 5s, timeout: 5s"), "gpu0.yaml", 7, "services.a.health.timeout",
        "timeout (5s) must be shorter than interval (5s): a probe must end before the next "
        "one starts",
    ),
    "default_timeout_above_short_interval": Case(
        _health("interval: 2s"), "gpu0.yaml", 7, "services.a.health.timeout",
        "timeout (5s) must be shorter than interval (2s)",
    ),
    "stop_timeout_forever": Case(
        {"gpu0.yaml": VLLM + "    stop_timeout: forever\n"}, "gpu0.yaml", 7,
        "services.a.stop_timeout",
        "expected a grace period such as 30s (finite: a hung engine must still stop)",
    ),
    "tensor_parallel_larger_than_gpu_list": Case(
        _args("tensor-parallel-size: 4", TP2), "gpu0.yaml", 7,
        "services.a.args.tensor-parallel-size",
        "tensor-parallel-size 4 needs 4 GPUs, but this profile's gpu: lists 2; "
        "allowed: 1 to 2 (or list more GPUs in gpu:)",
    ),
    "tensor_times_pipeline_parallel": Case(
        _args("tensor_parallel_size: 2, pipeline-parallel-size: 2", TP2), "gpu0.yaml", 7,
        "services.a.args.pipeline-parallel-size",
        "tensor_parallel_size 2 times pipeline-parallel-size 2 needs 4 GPUs",
    ),
}  # fmt: skip

HINTS: dict[str, Case] = {
    "string_command_shows_the_list_form": Case(
        {"gpu0.yaml": OLLAMA + "    command: /usr/local/bin/ollama serve\n"}, "gpu0.yaml", 7,
        "services.o.command",
        "write one item per word: [/usr/local/bin/ollama, serve] (no shell is involved)",
    ),
    "one_word_command": Case(
        {"gpu0.yaml": OLLAMA + "    command: /usr/local/bin/ollama\n"}, "gpu0.yaml", 7,
        "services.o.command", "for one item write [/usr/local/bin/ollama]",
    ),
    "profile_over_one_mib": Case(
        {"gpu0.yaml": VLLM + "#" * MAX_FILE_BYTES + "\n"}, "gpu0.yaml", 1, "",
        "file is 1.0 MiB; a config file may be at most 1 MiB (profiles are a few KiB): "
        "is this a profile?",
    ),
}  # fmt: skip

TABLES = {
    "flag_spelling": FLAG_SPELLINGS, "yaml11_number": YAML11_NUMBERS, "env_name": ENV_NAMES,
    "wrong_file": WRONG_FILE, "impossible_number": IMPOSSIBLE_NUMBERS, "hint": HINTS,
}  # fmt: skip
ALL = {f"{table}:{name}": case for table, cases in TABLES.items() for name, case in cases.items()}


@pytest.mark.parametrize("name", sorted(ALL))
def test_mistake_is_rejected_with_the_exact_message(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = ALL[name]
    config_dir = write_dir(tmp_path / "conf", case.files)
    code, out, err = run_check(capsys, config_dir)
    assert code == EX_CONFIG, out + err
    assert error_line(config_dir, case).search(err), err
    assert "Traceback" not in err


# --- what must keep working -------------------------------------------------------------

ACCEPTED: dict[str, dict[str, str | bytes]] = {
    "human_readable_max_model_len": _args("max_model_len: 16k, max-num-batched-tokens: 1M"),
    "max_model_len_auto": _args("max-model-len: auto"),
    "tensor_parallel_within_gpu_list": _args("tensor-parallel-size: 2", TP2),
    "underscore_utilizations_that_fit": {
        "gpu0.yaml": VLLM + "    args: {gpu_memory_utilization: 0.4}\n"
        "  b:\n    engine: vllm\n    model: n\n    port: 8002\n"
        "    args: {gpu_memory_utilization: 0.4}\n",
    },
    "empty_policy": {"gpu0.yaml": VLLM, "policy.yaml": "# all defaults\n"},
    "quoted_port_and_env_names": {"gpu0.yaml": VLLM + "    env: {HF_HOME: /srv, _X: '010'}\n"},
    "command_engine_keeps_its_flags": {
        "gpu0.yaml": "gpu: 0\nservices:\n  c:\n    engine: command\n    port: 9000\n"
        "    command: [srv]\n    args: {max_model_len: x, max-model-len: y}\n",
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_valid_config_is_accepted(name: str, tmp_path: Path) -> None:
    load_config(write_dir(tmp_path, ACCEPTED[name]))


def test_empty_policy_means_all_defaults(tmp_path: Path) -> None:
    write_dir(tmp_path, {"gpu0.yaml": VLLM, "policy.yaml": "# nothing yet\n"})
    config, _ = load_config(tmp_path)
    assert config.policy.keep_alive.default == 1800.0
    assert config.policy_source == str(tmp_path / "policy.yaml")


def test_underscore_spelling_is_the_budget_admission_uses(tmp_path: Path) -> None:
    write_dir(tmp_path, _args("gpu_memory_utilization: 0.4"))
    config, _ = load_config(tmp_path)
    assert config.services["a"].spec.gpu_memory_utilization == 0.4


def test_octal_env_value_stays_as_written_when_quoted(tmp_path: Path) -> None:
    write_dir(tmp_path, {"gpu0.yaml": VLLM + "    env: {UMASK: '0022'}\n"})
    config, _ = load_config(tmp_path)
    assert config.services["a"].spec.env["UMASK"] == "0022"


@pytest.mark.parametrize(
    ("text", "value"),
    [("16k", 16_000), ("16K", 16_384), ("25.6k", 25_600), ("1M", 2**20), ("2048", 2048),
     (4096, 4096), ("auto", None), (-1, None), ("1.5K", None)],
)  # fmt: skip
def test_human_readable_ints_follow_vllm(text: object, value: int | None) -> None:
    # vllm/utils/argparse_utils.py human_readable_int: k/m/g/t decimal, K/M/G/T binary,
    # no decimals with a binary suffix; max-model-len also takes auto / -1.
    assert vllmargs.int_value({"max_model_len": text}, "max-model-len") == value


def test_hints_use_the_operators_spelling() -> None:
    hint = "set max-model-len to 9000 or lower, or raise gpu-memory-utilization"
    spelled = vllmargs.respell(hint, {"max_model_len": 1, "gpu-memory-utilization": 0.5})
    assert spelled == "set max_model_len to 9000 or lower, or raise gpu-memory-utilization"


def test_check_of_a_one_mib_profile_is_under_a_second(tmp_path: Path) -> None:
    """The cap's promise: the biggest file `check` accepts costs well under a second."""
    import time

    (tmp_path / "gpu0.yaml").write_text(big_profile(MAX_FILE_BYTES), encoding="utf-8")
    started = time.process_time()  # CPU time: a loaded CI machine does not make it flaky
    config, _ = load_config(tmp_path)
    assert time.process_time() - started < 1.0
    assert len(config.services) > 4000
    assert re.fullmatch(r"s\d+", next(iter(config.services)))
