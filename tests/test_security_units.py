"""The pieces behind "safe to open to a room", one by one: keys file, StrictModes, secrets,
socket directory, log file modes, Ollama's model-name matching, admin routes without keys."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from llm_supervisor.config.keysfile import load_gateway_keys
from llm_supervisor.config.load import load_config
from llm_supervisor.config.modelnames import canonical_model_name, matches_model_pattern
from llm_supervisor.config.models import ServiceSpec
from llm_supervisor.config.secrets import (
    MASK,
    is_secret_name,
    redact_argv,
    secret_values,
)
from llm_supervisor.config.trust import untrusted_reason
from llm_supervisor.control.address import ensure_socket_dir, untrusted_socket_dir
from llm_supervisor.engines.base import engine_api_key
from llm_supervisor.errors import ConfigError, ControlError
from llm_supervisor.gateway.auth import host_allowed
from llm_supervisor.gateway.models_view import MAX_MODEL_ENTRIES, PolicyState
from llm_supervisor.gateway.stats import GatewayStats
from llm_supervisor.process.output import RotatingFile
from tests.daemon_harness import CLI
from tests.test_gateway import RigFactory, rig_factory  # noqa: F401 (fixture)

KEY = "sk-0123456789abcdef-room"


# -- keys file ---------------------------------------------------------------------------


def test_keys_file_accepts_digests_and_plain_keys_and_compares_them(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    path.write_text(
        f"- {{name: room, key_sha256: {digest}, models: ['gpt-oss:*']}}\n"
        "- {name: ops, key: sk-admin-0123456789abcd, role: admin}\n"
    )
    keys = load_gateway_keys(path)
    room = keys.lookup(KEY)
    assert room is not None and room.name == "room" and room.role == "user"
    assert room.allows("GPT-OSS:120b") and not room.allows("llama3.2")
    assert keys.lookup("sk-admin-0123456789abcd") is not None
    assert keys.lookup("sk-wrong") is None and keys.lookup(None) is None
    assert "sk-admin" not in repr(keys)


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("- {name: a, role: user}\n", ":1:3", "exactly one of 'key' or 'key_sha256'"),
        ("- {name: a, key: sk-0123456789abcdef, rol: admin}\n", ":1:", "did you mean 'role'"),
        ("- {name: a, key_sha256: abc}\n", ":1:", "expected text matching"),
        ("name: a\n", ":1:1", "expected a list of keys"),
        ("- {name: a, key: sk-0123456789abcdef}\n- {name: a, key: sk-0123456789abcdeX}\n",
         ":2:3", "the same name as entry 1"),
        ("- [unclosed\n", ":", ""),
    ],
)  # fmt: skip
def test_a_malformed_keys_file_is_reported_with_file_and_line(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_gateway_keys(path)
    assert f"{path}{where}" in str(error.value) and message in str(error.value)


# -- StrictModes ---------------------------------------------------------------------------


def test_files_others_can_write_or_foreign_owners_are_untrusted(tmp_path: Path) -> None:
    path = tmp_path / "gpu0.yaml"
    path.write_text("gpu: cpu\n")
    os.chmod(path, 0o644)
    assert untrusted_reason(path, enforce=True) is None
    os.chmod(path, 0o646)
    assert "writable by group or others (mode 0646)" in str(untrusted_reason(path, enforce=True))
    os.chmod(path, 0o644)
    if os.geteuid() == 0:
        os.chown(path, 65534, -1)
        assert "owned by uid 65534" in str(untrusted_reason(path, enforce=True))
    assert untrusted_reason(path, enforce=False) is None  # not root: nothing to escalate to


@pytest.mark.skipif(os.geteuid() != 0, reason="StrictModes applies to a daemon running as root")
def test_a_group_writable_config_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "gpu0.yaml").write_text("gpu: cpu\nservices: {}\n")
    os.chmod(tmp_path, 0o775)
    with pytest.raises(ConfigError, match="writable by group or others"):
        load_config(tmp_path)
    os.chmod(tmp_path, 0o755)
    load_config(tmp_path)


# -- secrets ------------------------------------------------------------------------------


def test_secret_names_and_their_redaction() -> None:
    for name in ("api-key", "--api-key", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "apikey",
                 "db_password", "GOOGLE_APPLICATION_CREDENTIALS"):  # fmt: skip
        assert is_secret_name(name), name
    for name in ("max-num-batched-tokens", "tokenizer", "model", "kv-cache-dtype", "HF_HOME"):
        assert not is_secret_name(name), name
    argv = ["vllm", "--api-key", "sk-1", "--hf-token=hf_2", "--max-model-len", "8192"]
    assert redact_argv(argv) == [
        "vllm", "--api-key", MASK, f"--hf-token={MASK}", "--max-model-len", "8192"
    ]  # fmt: skip


# -- control socket directory and log files -------------------------------------------------


def test_a_non_root_socket_dir_is_private_and_a_foreign_one_refused(tmp_path: Path) -> None:
    mine = tmp_path / "mine" / "llm-supervisor-1000"
    owner = os.stat(tmp_path).st_uid
    ensure_socket_dir(mine, euid=1000 if owner == 0 else owner)
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    if os.geteuid() == 0:
        foreign = tmp_path / "llm-supervisor-1000"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 1001, -1)
        assert "owned by uid 1001" in str(untrusted_socket_dir(foreign, euid=1000))
        with pytest.raises(ControlError, match="owned by uid 1001"):
            ensure_socket_dir(foreign, euid=1000)


def test_engine_logs_are_not_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "svc.log"
    RotatingFile(path).write(b"hello\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    old = tmp_path / "old.log"
    old.write_bytes(b"x")
    os.chmod(old, 0o644)
    RotatingFile(old)
    assert stat.S_IMODE(old.stat().st_mode) == 0o640


# -- names and hosts ------------------------------------------------------------------------


def test_model_names_match_the_ollama_way() -> None:
    assert canonical_model_name("Llama3.2") == "llama3.2:latest"
    assert canonical_model_name("registry:5000/Qwen") == "registry:5000/qwen:latest"
    assert matches_model_pattern("GPT-OSS:120B", "gpt-oss:*")
    assert matches_model_pattern("llama3.2", "Llama3.2:latest")
    assert matches_model_pattern("qwen3-8b", "*-8b")
    assert not matches_model_pattern("llama3.2:1b", "llama3.2")


@pytest.mark.parametrize(
    ("host", "allowed"),
    [("localhost:11434", True), ("127.0.0.1", True), ("[::1]:80", True), ("10.0.0.7", True),
     ("box.local", True), ("svc.internal", True), ("a.localhost", True), ("", True),
     ("evil.example", False), ("evil.example:11434", False), ("localhost.evil.com", False),
     ("8.8.8.8", False)],
)  # fmt: skip
def test_hosts_allowed_on_loopback_are_ollamas(host: str, allowed: bool) -> None:
    assert host_allowed(host) is allowed


# -- admin routes without keys -----------------------------------------------------------


async def test_admin_routes_are_closed_without_keys_unless_the_policy_allows(
    rig_factory: RigFactory,  # noqa: F811
) -> None:
    closed = await rig_factory()
    async with httpx.AsyncClient() as client:
        refused = await client.request("DELETE", closed.url + "/api/delete",
                                       json={"model": "llama3.2:3b"})  # fmt: skip
        assert refused.status_code == 403
        assert "admin_routes: allow" in refused.json()["error"]
        opened = await rig_factory(admin_routes="allow")
        deleted = await client.request("DELETE", opened.url + "/api/delete",
                                       json={"model": "llama3.2:3b"})  # fmt: skip
        assert deleted.status_code == 200
        assert opened.fake.counts["deleted"] == 1


def test_an_engines_own_key_comes_from_its_args_or_vllms_env_variable() -> None:
    base = {"engine": "vllm", "port": 8001, "model": "m"}
    assert engine_api_key(ServiceSpec.model_validate(base)) is None
    with_arg = ServiceSpec.model_validate({**base, "args": {"api-key": "sk-arg-123456"}})
    assert engine_api_key(with_arg) == "sk-arg-123456"
    with_env = ServiceSpec.model_validate({**base, "env": {"VLLM_API_KEY": "sk-env-123456"}})
    assert engine_api_key(with_env) == "sk-env-123456"
    assert secret_values(with_env.args, with_env.env) == ("sk-env-123456",)


def test_check_validates_the_keys_file_too(tmp_path: Path) -> None:
    (tmp_path / "gpu0.yaml").write_text("gpu: cpu\nservices: {}\n")
    keys = tmp_path / "keys"
    keys.write_text("- {name: a, role: boss, key: sk-0123456789abcdef}\n")
    result = subprocess.run(
        [*CLI, "check", "--no-gpus", "--config-dir", str(tmp_path), "--gateway-keys", str(keys)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 78
    assert f"{keys}:1:" in result.stderr and "expected 'user' or 'admin'" in result.stderr


def test_per_model_memory_stays_bounded_under_random_names() -> None:
    stats = GatewayStats(known=lambda: {"gpt-oss:120b": "gpt-oss:120b"})
    state = PolicyState(backend=None, stats=stats)  # type: ignore[arg-type]
    state.record_ps("ollama", [{"name": "llama3.2:3b"}])
    state.note_model("gpt-oss:120b")
    state.note_model("llama3.2:3b")
    for i in range(3 * MAX_MODEL_ENTRIES):
        state.request_started(f"random-{i}")
        state.request_ended(f"random-{i}")
    assert len(state.model_last_request) <= MAX_MODEL_ENTRIES + 1
    assert {"gpt-oss:120b", "llama3.2:3b"} <= set(state.model_last_request)  # known, loaded
    assert not state.models_in_flight  # nothing in flight: nothing remembered
    assert stats.label("Random-1") == "other" and stats.label("GPT-OSS:120B") == "gpt-oss:120b"
