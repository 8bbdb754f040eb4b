"""A gateway opened to a room: keys, roles, allow-lists, admin routes, Host, Ollama-style JSON,
bounded labels, secrets and engine keys — through the real daemon and the official clients.

One daemon serves the whole module (each start costs seconds on the 2-core machine); the
tests that change its files put them back.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import string
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
import yaml

from tests.daemon_harness import (
    CLI,
    DaemonProcess,
    fake_ollama,
    fake_vllm,
    free_port,
    profile_text,
    run_daemon,
    wait_until,
)

BIG, SMALL = "gpt-oss:120b", "llama3.2:3b"
USER_KEY = "sk-workshop-0123456789abcdef"
SMALL_ONLY_KEY = "sk-small-only-0123456789abcdef"
ADMIN_KEY = "sk-admin-0123456789abcdef0123"
ENGINE_KEY = "sk-engine-secret-0123456789"
KEYS = [
    {"name": "workshop", "key_sha256": hashlib.sha256(USER_KEY.encode()).hexdigest()},
    {"name": "small", "key": SMALL_ONLY_KEY, "models": ["llama3.2*", "qwen3"]},
    {"name": "ops", "key": ADMIN_KEY, "role": "admin"},
]
POLICY = {
    "keep_alive": {"default": "30m", "rules": [{"match": "gpt-oss:*", "keep_alive": "forever"}]},
    "pin": [BIG],
}


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("room")
    config, keys = root / "config", root / "gateway-keys"
    config.mkdir()
    ollama_port, vllm_port = free_port(), free_port()
    services = {
        "ollama": fake_ollama(ollama_port, [BIG, SMALL]),
        "qwen": fake_vllm(vllm_port, "Qwen/Qwen3-8B", served_name="qwen3",
                          args={"api-key": ENGINE_KEY}),
    }  # fmt: skip
    (config / "gpu0.yaml").write_text(profile_text(services))
    (config / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    keys.write_text(yaml.safe_dump(KEYS))
    with run_daemon(config, gateway=True, extra_args=["--gateway-keys", str(keys)]) as daemon:
        ROOM[:] = [(ollama_port, keys)]
        yield daemon


ROOM: list[tuple[int, Path]] = []  # the module daemon's fake Ollama port and keys file


def fake_stats(room: DaemonProcess) -> dict[str, Any]:
    port = ROOM[0][0]
    stats: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/_fake/stats").json()
    return stats


def post(room: DaemonProcess, path: str, body: bytes | dict[str, Any], **headers: str) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {USER_KEY}", **headers}
    return httpx.post(room.gateway_url + path, content=data, headers=headers, timeout=10)


def metrics(room: DaemonProcess) -> str:
    sock = room.control.removeprefix("unix:")
    with httpx.Client(transport=httpx.HTTPTransport(uds=sock)) as client:
        return client.get("http://control/metrics").text


# -- keys --------------------------------------------------------------------------------


def test_requests_without_a_valid_key_get_401_in_the_apis_own_shape(room: DaemonProcess) -> None:
    body = {"model": SMALL, "prompt": "x", "stream": False}
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"X-API-Key": "sk-wrong"}):
        missing = httpx.post(room.gateway_url + "/api/generate", json=body, headers=headers)
        assert missing.status_code == 401
        assert "API key" in missing.json()["error"]
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=room.gateway_url).generate(model=SMALL, prompt="x")
    assert refused.value.status_code == 401
    client = openai.OpenAI(base_url=room.gateway_url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        client.chat.completions.create(model=SMALL, messages=[{"role": "user", "content": "x"}])
    assert denied.value.code == "invalid_api_key"


def test_a_key_works_as_bearer_in_any_case_or_as_x_api_key(room: DaemonProcess) -> None:
    client = ollama.Client(host=room.gateway_url, headers={"Authorization": f"Bearer {USER_KEY}"})
    assert client.generate(model=SMALL, prompt="x").response
    for headers in ({"Authorization": f"bEaReR {USER_KEY}"}, {"X-API-Key": ADMIN_KEY}):
        ok = httpx.post(room.gateway_url + "/api/generate", headers=headers,
                        json={"model": SMALL, "prompt": "x", "stream": False})  # fmt: skip
        assert ok.status_code == 200, ok.text
    oai = openai.OpenAI(base_url=room.gateway_url + "/v1", api_key=USER_KEY, max_retries=0)
    answer = oai.chat.completions.create(model=SMALL, messages=[{"role": "user", "content": "x"}])
    assert answer.choices[0].message.content
    assert 'llm_supervisor_gateway_key_requests_total{key="workshop"}' in metrics(room)
    assert USER_KEY not in metrics(room) and USER_KEY not in room.log_tail(10_000)


def test_a_model_outside_the_keys_list_is_403(room: DaemonProcess) -> None:
    small = ollama.Client(host=room.gateway_url, headers={"X-API-Key": SMALL_ONLY_KEY})
    assert small.generate(model="LLAMA3.2:3B", prompt="x").response  # Ollama's name matching
    with pytest.raises(ollama.ResponseError) as refused:
        small.generate(model=BIG, prompt="x")
    assert refused.value.status_code == 403 and "small" in refused.value.error
    oai = openai.OpenAI(base_url=room.gateway_url + "/v1", api_key=SMALL_ONLY_KEY, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        oai.chat.completions.create(model=BIG, messages=[{"role": "user", "content": "x"}])
    assert {m.id for m in oai.models.list()} == {SMALL, "qwen3"}
    assert {m.model for m in small.list().models} == {SMALL}  # /api/tags as the key sees it


# -- admin routes ------------------------------------------------------------------------


def test_admin_routes_need_an_admin_key(room: DaemonProcess) -> None:
    user = ollama.Client(host=room.gateway_url, headers={"X-API-Key": USER_KEY})
    with pytest.raises(ollama.ResponseError) as refused:
        user.delete(SMALL)
    assert refused.value.status_code == 403 and "admin" in refused.value.error
    blob = post(room, "/api/blobs/sha256:" + "0" * 64, b"x")
    assert blob.status_code == 403
    admin = ollama.Client(host=room.gateway_url, headers={"X-API-Key": ADMIN_KEY})
    assert admin.pull("tinyllama").status == "success"
    assert fake_stats(room)["counts"].get("pulled") == 1


# -- Host --------------------------------------------------------------------------------


def test_a_foreign_host_is_refused_on_loopback_as_ollama_does(room: DaemonProcess) -> None:
    body = {"model": SMALL, "prompt": "x", "stream": False}
    assert post(room, "/api/generate", body, Host="evil.example").status_code == 403
    assert post(room, "/api/generate", body, Host="localhost:11434").status_code == 200


# -- JSON decoded as Ollama decodes it -----------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"gpt-oss:120b","prompt":"x","keep_alive":"5m","KEEP_ALIVE":0,"stream":false}',
        b'{"Model":"gpt-oss:120b","keep_alive":0,"prompt":"x","stream":false}',
        b'{"model":"gpt-oss:120b","prompt":"x","keep_alive":"5m","\\u212aeep_alive":0,'
        b'"stream":false}',  # KELVIN SIGN K folds to k in Go
        b'{"model":"llama3.2:3b","MODEL":"GPT-OSS:120B","prompt":"x","keep_alive":0,'
        b'"stream":false}',
    ],
)
def test_case_variant_and_duplicate_keys_cannot_unload_a_pin(
    room: DaemonProcess, raw: bytes
) -> None:
    answer = post(room, "/api/generate", raw)
    assert answer.status_code == 200, answer.text
    stats = fake_stats(room)
    assert stats["keep_alive"][BIG] == -1  # the policy's forever, as Ollama stored it
    assert BIG in stats["loaded"]


def test_data_after_the_json_object_is_refused(room: DaemonProcess) -> None:
    for raw in (b'{"model":"llama3.2:3b","prompt":"x"}{"model":"gpt-oss:120b","keep_alive":0}',
                b'{"model":"llama3.2:3b","prompt":"x"} trailing'):  # fmt: skip
        refused = post(room, "/api/generate", raw)
        assert refused.status_code == 400 and "after the JSON value" in refused.json()["error"]
        v1 = post(room, "/v1/chat/completions", raw)
        assert v1.status_code == 400 and v1.json()["error"]["code"] == "invalid_body"


# -- bounded labels ------------------------------------------------------------------------


def test_random_model_names_are_counted_as_other(room: DaemonProcess) -> None:
    names = ["".join(random.choices(string.ascii_lowercase, k=12)) for _ in range(200)]
    for name in names:
        post(room, "/api/generate", {"model": name, "prompt": "x", "stream": False})
    text = metrics(room)
    assert not any(name in text for name in names)
    status = json.dumps(room.status())
    assert not any(name in status for name in names)
    assert 'model="other"' in text


# -- engines with their own key, and secrets ------------------------------------------------


def test_vllm_with_its_own_key_is_probed_and_served_with_it(room: DaemonProcess) -> None:
    assert room.services()["qwen"]["state"] == "ready"  # the readiness probe sent the key
    oai = openai.OpenAI(base_url=room.gateway_url + "/v1", api_key=USER_KEY, max_retries=0)
    answer = oai.chat.completions.create(model="qwen3", messages=[{"role": "user", "content": "x"}])
    assert answer.choices[0].message.content == "fake reply"


def test_secret_arguments_never_leave_the_daemon(room: DaemonProcess) -> None:
    spawned = [e for e in room.events("service.spawned") if e.get("service") == "qwen"]
    assert spawned and "***" in spawned[-1]["argv"]
    engine_log = (room.log_dir / "qwen.log").read_text()
    assert "non-default args: {'api_key': ['***']}" in engine_log  # the engine printed it
    logs = room.cli("logs", "qwen", "-n", "all")
    assert "api_key" in logs.stdout + logs.stderr
    everything = room.log_tail(100_000) + json.dumps(room.status()) + metrics(room)
    assert ENGINE_KEY not in everything + engine_log + logs.stdout + logs.stderr


# -- reload --------------------------------------------------------------------------------


def test_keys_are_reread_on_reload_and_a_broken_file_keeps_the_old_ones(
    room: DaemonProcess,
) -> None:
    keys_file = ROOM[0][1]
    original = keys_file.read_text()
    new_key = "sk-added-at-runtime-0123456789"
    try:
        keys_file.write_text(original + yaml.safe_dump([{"name": "late", "key": new_key}]))
        assert room.cli("reload", "--wait").returncode == 0
        ok = post(room, "/api/generate", {"model": SMALL, "prompt": "x", "stream": False},
                  Authorization=f"Bearer {new_key}")  # fmt: skip
        assert ok.status_code == 200
        keys_file.write_text("- {name: broken, role: user}\n")
        rejected = room.cli("reload", "--wait")
        assert rejected.returncode != 0
        assert f"{keys_file}:1:3" in rejected.stdout + rejected.stderr
        assert "key_sha256" in rejected.stdout + rejected.stderr
        still = post(room, "/api/generate", {"model": SMALL, "prompt": "x", "stream": False},
                     Authorization=f"Bearer {new_key}")  # fmt: skip
        assert still.status_code == 200
    finally:
        keys_file.write_text(original)
        room.cli("reload", "--wait")


def test_a_profile_others_can_write_is_refused_and_the_running_config_stays(
    room: DaemonProcess,
) -> None:
    profile = room.config_dir / "gpu0.yaml"
    try:
        os.chmod(profile, 0o664)
        rejected = room.cli("reload", "--wait")
        assert rejected.returncode != 0
        assert "writable by group or others" in rejected.stdout + rejected.stderr
        check = subprocess.run([*CLI, "check", "--config-dir", str(room.config_dir)],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        assert (
            check.returncode == 78 and "writable by group or others" in check.stdout + check.stderr
        )
        assert room.services()["ollama"]["state"] == "ready"
        os.chmod(profile, 0o644)
        os.chown(profile, 65534, -1)  # nobody
        refused = room.cli("reload", "--wait")
        assert refused.returncode != 0 and "owned by uid 65534" in refused.stdout + refused.stderr
    finally:
        os.chown(profile, 0, -1)
        os.chmod(profile, 0o644)
        wait_until(lambda: room.cli("reload", "--wait").returncode == 0, what="reload accepted")


# -- open to the network without keys ------------------------------------------------------


def test_a_gateway_on_all_interfaces_without_keys_warns_and_keeps_admin_closed(
    tmp_path: Path,
) -> None:
    port, gateway = free_port(), free_port()
    (tmp_path / "gpu0.yaml").write_text(profile_text({"ollama": fake_ollama(port, [SMALL])}))
    with run_daemon(tmp_path, gateway=True, extra_args=["--gateway", f"0.0.0.0:{gateway}"]) as d:
        warning = d.events("gateway.open_without_keys")
        assert warning and warning[0]["address"] == f"0.0.0.0:{gateway}"
        url = f"http://127.0.0.1:{gateway}"
        # Not on loopback: the Host check is Ollama's loopback-only defence, so it is off.
        body = {"model": SMALL, "prompt": "x", "stream": False}
        answer = httpx.post(url + "/api/generate", json=body, headers={"Host": "gpu.example"})
        assert answer.status_code == 200
        refused = httpx.request("DELETE", url + "/api/delete", json={"model": SMALL})
        assert refused.status_code == 403 and "admin_routes: allow" in refused.json()["error"]
