"""`llm-supervisor check` on broken config directories: exit 78, file:line:col, key, message.

Each case writes a small config directory, runs the real CLI entry point in-process and
checks the compiler-style line that must name the file, the line, the dotted key and say
what was expected. A few cases run as a real subprocess to cover the console script path.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_supervisor.cli import EX_CONFIG, main
from llm_supervisor.config.load import load_config
from llm_supervisor.errors import ConfigError

GIB = 2**30
VLLM = "gpu: 0\nservices:\n  a:\n    engine: vllm\n    model: m\n    port: 8001\n"
OLLAMA = "gpu: 1\nservices:\n  o:\n    engine: ollama\n    port: 11435\n    models: [big]\n"


@dataclass(frozen=True)
class Case:
    files: dict[str, str | bytes]
    file: str  # the file the error must name ("" for the directory itself)
    line: int  # 0: no line (directory-level)
    key: str  # dotted key path ("" for file-level errors)
    text: str  # a fragment of the message


CASES: dict[str, Case] = {
    "syntax_error": Case(
        {"gpu0.yaml": "gpu: 0\nservices:\n  a: {engine: vllm, port: 1\n"},
        "gpu0.yaml", 4, "", "YAML syntax error",
    ),
    "half_written_file": Case(
        {"gpu0.yaml": 'gpu: 0\nservices:\n  a:\n    engine: vllm\n    model: "Qwen/Qw'},
        "gpu0.yaml", 5, "", "YAML syntax error",
    ),
    "tab_indentation": Case(
        {"gpu0.yaml": "gpu: 0\nservices:\n\ta:\n\t\tengine: vllm\n"},
        "gpu0.yaml", 3, "", "tab characters",
    ),
    "unknown_key_did_you_mean": Case(
        {"gpu0.yaml": VLLM + "    prot: 8002\n"},
        "gpu0.yaml", 7, "services.a.prot", "did you mean 'port'?",
    ),
    "unknown_key_in_health_suggests_health_field": Case(
        {"gpu0.yaml": VLLM + "    health:\n      failurs: 3\n"},
        "gpu0.yaml", 8, "services.a.health.failurs", "did you mean 'failures'?",
    ),
    "unknown_key_in_policy": Case(
        {"gpu0.yaml": VLLM, "policy.yaml": "pins: [m]\n"},
        "policy.yaml", 1, "pins", "did you mean 'pin'?",
    ),
    "misplaced_key": Case(
        {"gpu0.yaml": VLLM + "port: 9000\n"},
        "gpu0.yaml", 7, "port", "is it indented wrongly?",
    ),
    "wrong_type_port": Case(
        {"gpu0.yaml": VLLM.replace("port: 8001", "port: eighty")},
        "gpu0.yaml", 6, "services.a.port", "expected an integer, got 'eighty'",
    ),
    "wrong_type_vllm_arg": Case(
        {"gpu0.yaml": VLLM + "    args:\n      max-model-len: 8kb\n"},
        "gpu0.yaml", 8, "services.a.args.max-model-len", "expected a positive integer",
    ),
    "wrong_type_models_not_a_list": Case(
        {"gpu0.yaml": OLLAMA.replace("[big]", "big")},
        "gpu0.yaml", 6, "services.o.models", "expected a list",
    ),
    "nested_arg_value": Case(
        {"gpu0.yaml": VLLM + "    args:\n      kv: {a: 1}\n"},
        "gpu0.yaml", 8, "services.a.args.kv", "got a mapping",
    ),
    "env_yaml_boolean": Case(
        {"gpu0.yaml": VLLM + "    env:\n      HF_HUB_OFFLINE: yes\n"},
        "gpu0.yaml", 8, "services.a.env.HF_HUB_OFFLINE", "quote it",
    ),
    "duplicate_key": Case(
        {"gpu0.yaml": VLLM + "    port: 8002\n"},
        "gpu0.yaml", 7, "services.a.port", "duplicate key 'port' (first defined at line 6)",
    ),
    "duplicate_port_across_files": Case(
        {"gpu0.yaml": VLLM, "gpu1.yaml": OLLAMA.replace("11435", "8001")},
        "gpu1.yaml", 5, "services.o.port", "port 8001 is already used by service 'a'",
    ),
    "duplicate_service_across_files": Case(
        {"gpu0.yaml": VLLM, "gpu1.yaml": OLLAMA.replace("  o:", "  a:")},
        "gpu1.yaml", 3, "services.a", "service 'a' is already defined in",
    ),
    "duplicate_model_across_services": Case(
        {"gpu0.yaml": VLLM.replace("model: m", "model: big"), "gpu1.yaml": OLLAMA},
        "gpu1.yaml", 6, "services.o.models.0", "model 'big' is also offered by service 'a'",
    ),
    "bad_duration": Case(
        {"gpu0.yaml": VLLM + "    health:\n      interval: 10x\n"},
        "gpu0.yaml", 8, "services.a.health.interval", "expected a duration such as 30s",
    ),
    "yaml11_boolean_as_duration": Case(
        {"gpu0.yaml": VLLM, "policy.yaml": "keep_alive:\n  default: off\n"},
        "policy.yaml", 2, "keep_alive.default", "YAML boolean false",
    ),
    "yaml11_boolean_in_rule": Case(
        {"gpu0.yaml": VLLM, "policy.yaml": "keep_alive:\n  rules:\n  - {match: m, keep_alive: no}"},
        "policy.yaml", 3, "keep_alive.rules.0.keep_alive", "YAML boolean false",
    ),
    "negative_duration": Case(
        {"gpu0.yaml": VLLM + "    stop_timeout: -5\n"},
        "gpu0.yaml", 7, "services.a.stop_timeout", "cannot be negative",
    ),
    "negative_port": Case(
        {"gpu0.yaml": VLLM.replace("port: 8001", "port: -1")},
        "gpu0.yaml", 6, "services.a.port", "expected a number >= 1, got -1",
    ),
    "port_too_large": Case(
        {"gpu0.yaml": VLLM.replace("port: 8001", "port: 70000")},
        "gpu0.yaml", 6, "services.a.port", "<= 65535",
    ),
    "unknown_engine": Case(
        {"gpu0.yaml": VLLM.replace("engine: vllm", "engine: vlm")},
        "gpu0.yaml", 4, "services.a.engine", "did you mean 'vllm'?",
    ),
    "missing_model_for_vllm": Case(
        {"gpu0.yaml": VLLM.replace("    model: m\n", "")},
        "gpu0.yaml", 3, "services.a.model", "engine vllm needs 'model'",
    ),
    "ollama_with_model_instead_of_models": Case(
        {"gpu0.yaml": OLLAMA.replace("models: [big]", "model: big")},
        "gpu0.yaml", 6, "services.o.model", "takes 'models: [...]'",
    ),
    "missing_port": Case(
        {"gpu0.yaml": VLLM.replace("    port: 8001\n", "")},
        "gpu0.yaml", 3, "services.a.port", "required key 'port' is missing",
    ),
    "missing_gpu": Case(
        {"gpu0.yaml": VLLM.replace("gpu: 0\n", "")},
        "gpu0.yaml", 1, "gpu", "required key 'gpu' is missing",
    ),
    "command_engine_without_command": Case(
        {"gpu0.yaml": "gpu: cpu\nservices:\n  c:\n    engine: command\n    port: 9000\n"},
        "gpu0.yaml", 3, "services.c.command", "engine command needs 'command'",
    ),
    "two_policy_files": Case(
        {"gpu0.yaml": VLLM, "policy.yaml": "pin: []\n", "policy.yml": "pin: []\n"},
        "policy.yml", 1, "", "more than one policy file (policy.yaml and policy.yml)",
    ),
    "overcommitted_gpu": Case(
        {
            "gpu0.yaml": VLLM + "    args: {gpu-memory-utilization: 0.6}\n"
            "  b:\n    engine: vllm\n    model: n\n    port: 8002\n"
            "    args: {gpu-memory-utilization: 0.6}\n",
        },
        "gpu0.yaml", 8, "services.b", "GPU 0 is overcommitted: gpu-memory-utilization a 0.60",
    ),
    "overcommitted_across_files": Case(
        {"gpu0.yaml": VLLM, "gpu0b.yaml": VLLM.replace("a:", "b:").replace("8001", "8002")},
        "gpu0b.yaml", 3, "services.b", "= 1.80 of its memory",
    ),
    "empty_file": Case({"gpu0.yaml": ""}, "gpu0.yaml", 1, "", "file is empty"),
    "only_comments": Case({"gpu0.yaml": "# nothing yet\n"}, "gpu0.yaml", 1, "", "file is empty"),
    "binary_garbage": Case(
        {"gpu0.yaml": b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00\x00"}, "gpu0.yaml", 1, "", "not UTF-8"
    ),
    "nul_bytes": Case({"gpu0.yaml": "gpu: 0\n\0\n"}, "gpu0.yaml", 2, "", "NUL bytes"),
    "no_profiles": Case({"policy.yaml": "pin: []\n"}, "", 0, "", "no profiles"),
    "empty_directory": Case({}, "", 0, "", "no profiles"),
    "directory_named_yaml": Case(
        {"gpu0.yaml": VLLM, "gpu1.yaml/": ""}, "gpu1.yaml", 1, "", "cannot read"
    ),
    "multiple_documents": Case(
        {"gpu0.yaml": VLLM + "---\n" + OLLAMA}, "gpu0.yaml", 7, "", "one YAML document"
    ),
    "top_level_list": Case({"gpu0.yaml": "- gpu: 0\n"}, "gpu0.yaml", 1, "", "got a list"),
    "top_level_scalar": Case({"gpu0.yaml": "hello\n"}, "gpu0.yaml", 1, "", "got 'hello'"),
    "bad_service_name": Case(
        {"gpu0.yaml": VLLM.replace("  a:", "  my model:")},
        "gpu0.yaml", 3, "services.my model", "invalid service name 'my model'",
    ),
    "service_name_with_slash": Case(
        {"gpu0.yaml": VLLM.replace("  a:", "  ../etc:")},
        "gpu0.yaml", 3, "services.../etc", "invalid service name",
    ),
    "gpu_ref_invalid": Case(
        {"gpu0.yaml": VLLM.replace("gpu: 0", "gpu: GPU0")},
        "gpu0.yaml", 1, "gpu", "expected a GPU index (0, 1, ...), a UUID 'GPU-...' or 'cpu'",
    ),
    "gpu_ref_negative": Case(
        {"gpu0.yaml": VLLM.replace("gpu: 0", "gpu: -1")}, "gpu0.yaml", 1, "gpu", "got -1"
    ),
    "gpu_list_duplicate": Case(
        {"gpu0.yaml": VLLM.replace("gpu: 0", "gpu: [0, 1, 0]")},
        "gpu0.yaml", 1, "gpu.2", "GPU 0 is listed twice",
    ),
    "gpu_list_with_cpu": Case(
        {"gpu0.yaml": VLLM.replace("gpu: 0", "gpu: [0, cpu]")},
        "gpu0.yaml", 1, "gpu.1", "'cpu' cannot be combined",
    ),
    "pressure_warning_above_critical": Case(
        {"gpu0.yaml": VLLM, "policy.yaml": "pressure:\n  warning: 0.97\n  critical: 0.9\n"},
        "policy.yaml", 2, "pressure.warning", "must not be above critical",
    ),
    "pressure_out_of_range": Case(
        {"gpu0.yaml": VLLM, "policy.yaml": "pressure: {critical: 1.5}\n"},
        "policy.yaml", 1, "pressure.critical", "<= 1",
    ),
    "bad_size_for_vram": Case(
        {"gpu0.yaml": OLLAMA + "    vram: 40 gigs\n"},
        "gpu0.yaml", 7, "services.o.vram", "expected a size such as 24GiB",
    ),
    "vram_on_vllm": Case(
        {"gpu0.yaml": VLLM + "    vram: 40GiB\n"},
        "gpu0.yaml", 7, "services.a.vram", "args.gpu-memory-utilization",
    ),
    "gpu_memory_utilization_above_one": Case(
        {"gpu0.yaml": VLLM + "    args: {gpu-memory-utilization: 85}\n"},
        "gpu0.yaml", 7, "services.a.args.gpu-memory-utilization", "in (0, 1]",
    ),
    "policy_mode_typo": Case(
        {"gpu0.yaml": VLLM, "policy.yaml": "keep_alive: {mode: enforced}\n"},
        "policy.yaml", 1, "keep_alive.mode", "did you mean 'enforce'?",
    ),
    "start_typo": Case(
        {"gpu0.yaml": VLLM + "    start: ondemand\n"},
        "gpu0.yaml", 7, "services.a.start", "did you mean 'on-demand'?",
    ),
    "recursive_alias": Case(
        {"gpu0.yaml": "gpu: 0\nservices: &s\n  a: *s\n"},
        "gpu0.yaml", 3, "services.a", "recursive alias",
    ),
    "unknown_tag": Case(
        {"gpu0.yaml": VLLM.replace("model: m", "model: !!python/name:os.system x")},
        "gpu0.yaml", 5, "services.a.model", "could not determine a constructor",
    ),
}  # fmt: skip


def write_dir(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if name.endswith("/"):
            (root / name.rstrip("/")).mkdir()
        elif isinstance(content, bytes):
            (root / name).write_bytes(content)
        else:
            (root / name).write_text(content, encoding="utf-8")
    return root


def run_check(capsys: pytest.CaptureFixture[str], config_dir: Path) -> tuple[int, str, str]:
    code = main(["check", "--config-dir", str(config_dir)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(config_dir: Path, case: Case) -> re.Pattern[str]:
    where = str(config_dir / case.file) if case.file else str(config_dir)
    position = rf":{case.line}:\d+:" if case.line else ":"
    key = rf" {re.escape(case.key)}:" if case.key else ""
    return re.compile(rf"^{re.escape(where)}{position}{key} .*{re.escape(case.text)}", re.M)


@pytest.mark.parametrize("name", sorted(CASES))
def test_broken_config_is_rejected_with_position_and_key(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = CASES[name]
    config_dir = write_dir(tmp_path / "conf", case.files)
    code, out, err = run_check(capsys, config_dir)
    assert code == EX_CONFIG, out + err
    assert error_line(config_dir, case).search(err), err
    assert re.search(r"^\d+ error\(s\); config rejected$", err, re.M)
    assert "Traceback" not in err


def test_at_least_25_broken_configs() -> None:
    assert len(CASES) >= 25


def test_every_error_of_every_file_is_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files: dict[str, str | bytes] = {
        "gpu0.yaml": VLLM.replace("port: 8001", "port: x") + "    prot: 1\n",
        "gpu1.yaml": "gpu: 1\nservices: {o: {engine: olama, port: 2}}\n",
        "policy.yaml": "keep_alive: {default: off}\n",
    }
    config_dir = write_dir(tmp_path / "conf", files)
    code, _, err = run_check(capsys, config_dir)
    assert code == EX_CONFIG
    lines = [line for line in err.splitlines() if line.startswith(str(config_dir))]
    assert len(lines) == 4, err
    assert "4 error(s); config rejected" in err
    assert lines == sorted(lines)  # file order, then line order


def test_union_errors_are_merged_into_one_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_dir = write_dir(tmp_path / "conf", {"gpu0.yaml": "gpu: {a: 1}\n"})
    code, _, err = run_check(capsys, config_dir)
    assert code == EX_CONFIG
    assert err.count("gpu0.yaml:1:") == 1, err
    assert "got {'a': 1}" in err or "got a mapping" in err or "GPU index" in err


def test_valid_config_exits_zero_and_prints_policy_warnings_with_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = "keep_alive:\n  rules:\n    - {match: 'llava*', keep_alive: 10m}\npin: [nope]\n"
    config_dir = write_dir(tmp_path / "conf", {"gpu0.yaml": VLLM, "policy.yaml": policy})
    code, out, err = run_check(capsys, config_dir)
    assert code == 0, err
    assert "ok (1 service)" in out
    policy_path = re.escape(str(config_dir / "policy.yaml"))
    assert re.search(rf"^warning: {policy_path}:3:\d+: keep_alive.rules.0.match: rule", err, re.M)
    assert re.search(rf"^warning: {policy_path}:4:\d+: pin.0: 'nope' is not offered", err, re.M)


def test_policy_warnings_are_suppressed_while_a_profile_is_broken(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {"gpu0.yaml": VLLM, "gpu1.yaml": "gpu: x\n"}
    write_dir(tmp_path, {**files, "policy.yaml": "pin: [m]\n"})
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert err.value.warnings == []
    assert [i.path for i in err.value.issues] == [str(tmp_path / "gpu1.yaml")]


def test_unreadable_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_dir = write_dir(tmp_path / "conf", {"gpu0.yaml": VLLM})
    target = config_dir / "gpu1.yaml"
    if os.geteuid() == 0:  # root reads mode-000 files; a dangling symlink cannot be read
        target.symlink_to(tmp_path / "gone.yaml")
    else:
        target.write_text(OLLAMA)
        target.chmod(0)
    code, _, err = run_check(capsys, config_dir)
    assert code == EX_CONFIG
    assert re.search(rf"^{re.escape(str(target))}:1:1: cannot read: ", err, re.M), err


def test_missing_config_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_check(capsys, tmp_path / "nope")
    assert code == EX_CONFIG
    assert f"{tmp_path / 'nope'}: does not exist" in err


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    text = (
        "gpu: cpu\nservices:\n  a: &d {engine: vllm, model: m, port: 8001}\n"
        "  b: {<<: *d, model: n, port: 8002}\n"
    )
    write_dir(tmp_path, {"gpu0.yaml": text})
    config, _ = load_config(tmp_path)
    assert config.services["b"].spec.model == "n"
    assert config.services["b"].spec.port == 8002
    assert config.services["a"].spec.port == 8001


# --- GPU facts (NVML totals) -------------------------------------------------------------


def test_overcommit_with_gpu_totals_names_gib(tmp_path: Path) -> None:
    vllm = VLLM.replace("gpu: 0", "gpu: 1") + "    args: {gpu-memory-utilization: 0.5}\n"
    write_dir(tmp_path, {"gpu1.yaml": vllm + OLLAMA.split("services:\n")[1] + "    vram: 48GiB\n"})
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, {1: 80 * GIB, "GPU-1": 80 * GIB})
    message = str(err.value)
    assert "a 40.0 GiB (gpu-memory-utilization 0.50) + o 48.0 GiB (vram)" in message
    assert "= 88.0 GiB, but the GPU has 80.0 GiB (110%)" in message


def test_vram_budgets_count_only_when_the_gpu_size_is_known(tmp_path: Path) -> None:
    write_dir(tmp_path, {"gpu1.yaml": OLLAMA + "    vram: 100GiB\n"})
    config, _ = load_config(tmp_path)  # no telemetry: nothing to compare with
    assert config.services["o"].spec.vram == 100 * GIB
    with pytest.raises(ConfigError, match="GPU 1 is overcommitted"):
        load_config(tmp_path, {0: 80 * GIB, 1: 80 * GIB})


def test_unknown_gpu_with_totals(tmp_path: Path) -> None:
    write_dir(tmp_path, {"gpu0.yaml": VLLM.replace("gpu: 0", "gpu: [0, 2]")})
    with pytest.raises(ConfigError, match=r"GPU 2 does not exist on this machine \(GPUs: 0, 1\)"):
        load_config(tmp_path, {0: 80 * GIB, 1: 80 * GIB})


# --- as a real process -------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "llm_supervisor.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


def test_subprocess_check_rejects_unknown_key(tmp_path: Path) -> None:
    case = CASES["unknown_key_did_you_mean"]
    config_dir = write_dir(tmp_path / "conf", case.files)
    result = run_cli("check", "--config-dir", str(config_dir))
    assert result.returncode == 78
    assert error_line(config_dir, case).search(result.stderr), result.stderr


def test_subprocess_check_rejects_yaml11_boolean_and_binary(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {
        **CASES["yaml11_boolean_as_duration"].files, "gpu9.yaml": b"\xff\xd8\xff\xe0JFIF",
    }  # fmt: skip
    config_dir = write_dir(tmp_path / "conf", files)
    result = run_cli("check", "--config-dir", str(config_dir))
    assert result.returncode == 78
    assert f"{config_dir / 'gpu9.yaml'}:1:1: not UTF-8" in result.stderr
    assert f"{config_dir / 'policy.yaml'}:2:3: keep_alive.default: " in result.stderr


def test_subprocess_check_accepts_shipped_profiles() -> None:
    profiles = Path(__file__).resolve().parent.parent / "profiles"
    result = run_cli("check", "--config-dir", str(profiles))
    assert result.returncode == 0, result.stderr
    # No warnings, and no note about GPU telemetry unless asked (--verbose).
    assert result.stderr == ""
    assert "ok (2 services)" in result.stdout


def test_pins_and_focus_name_models_the_way_ollama_does(tmp_path: Path) -> None:
    """``llama3.2``, ``Llama3.2`` and ``llama3.2:latest`` are one model: no 'not offered'."""
    profile = OLLAMA.replace("[big]", "[llama3.2:latest, big:1]")
    policy = "pin: [Llama3.2]\nfocus: [llama3.2, 'big:1']\n"
    write_dir(tmp_path, {"gpu1.yaml": profile, "policy.yaml": policy})
    _, warnings = load_config(tmp_path)
    assert [w.format() for w in warnings] == []


def test_check_says_why_gpu_facts_were_not_checked_only_when_verbose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_dir = write_dir(tmp_path / "conf", {"gpu0.yaml": VLLM})
    assert main(["check", "--no-gpus", "--config-dir", str(config_dir)]) == 0
    assert capsys.readouterr().err == ""
    assert main(["check", "--no-gpus", "-v", "--config-dir", str(config_dir)]) == 0
    err = capsys.readouterr().err
    assert "note: not asked (--no-gpus); GPU existence and memory budgets not checked" in err
