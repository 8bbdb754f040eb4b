"""The classroom replay (shared/seeds/003, 29 Jan 2026): model loads and time spent waiting.

Twelve participants one after another, with the pauses between them, each going through
the four code paths that sent their own keep_alive (``"10m"``, ``0``, ``"10m"``, ``"0s"``),
against tests/fakes/fake_ollama.py run by the real daemon with a load time for
gpt-oss:120b. Time is scaled down 600x so a run takes seconds: the 6.5 min cold load is
0.65 s, a 10 min pause 1 s, the clients' "10m" is sent as "1s". Reported: loads of the model
during class, requests that waited for one (scaled back: loads x 6.5 min), and the measured
time of all requests together.

Variants (a fresh daemon and fake each):
- direct: the clients talk to the fake Ollama's port (the baseline: what happened);
- gateway: through the daemon's gateway with the shipped policy's idea (gpt-oss:* kept
  forever, client unloads denied, the model pinned so it loads before class).

    .venv/bin/python bench/classroom_bench.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchutil import distinct_ports

from tests.daemon_harness import fake_ollama, profile_text, run_daemon, wait_until, write_atomic

SCALE = 600.0  # real seconds per bench second
LOAD_MINUTES = 6.5
BIG = "gpt-oss:120b"
# (code path, API, keep_alive as the client sent it, in real minutes or as a string)
CALL_SITES: list[tuple[str, str, float | str]] = [
    ("safety_check_*.json", "generate", "10m"),
    ("prompt_interception_engine.py", "chat", 0),
    ("manipulate.json", "generate", "10m"),
    ("image_analysis.py", "chat", "0s"),
]
GAPS_MINUTES = [4, 7, 12, 3, 15, 6, 9, 11, 5, 8, 14, 0]  # after each participant
READ_SECONDS = 20.0  # a participant reads, clicks on
POLICY = f"""keep_alive:
  default: 30m
  mode: enforce
  client_unload: deny
  rules:
    - {{match: "gpt-oss:*", keep_alive: forever}}
pin: [{BIG}]
"""


def scaled_keep_alive(value: float | str) -> float | str:
    """The client's value on the bench clock: "10m" → "1s"; 0 and "0s" stay."""
    if isinstance(value, str) and value.endswith("m"):
        return f"{float(value[:-1]) * 60 / SCALE:g}s"
    return value


def replay(client: httpx.Client) -> list[float]:
    """Every request's latency (seconds, bench clock)."""
    latencies = []
    for gap in GAPS_MINUTES:
        for _, api, keep_alive in CALL_SITES:
            body: dict[str, Any] = {"model": BIG, "stream": False}
            body["keep_alive"] = scaled_keep_alive(keep_alive)
            if api == "generate":
                body["prompt"] = "prompt"
            else:
                body["messages"] = [{"role": "user", "content": "x"}]
            start = time.monotonic()
            client.post(f"/api/{api}", json=body).raise_for_status()
            latencies.append(time.monotonic() - start)
            time.sleep(READ_SECONDS / SCALE)
        time.sleep(gap * 60 / SCALE)
    return latencies


def run_variant(via_gateway: bool) -> dict[str, Any]:
    load_s = LOAD_MINUTES * 60 / SCALE
    with tempfile.TemporaryDirectory(prefix="classroom-") as tmp:
        config_dir = Path(tmp)
        (port,) = distinct_ports(1)
        spec = fake_ollama(port, [BIG], health={"interval": 1.0})
        spec["command"] += ["--load-seconds", str(load_s), "--models", BIG]
        write_atomic(config_dir / "gpu0.yaml", profile_text({"ollama": spec}))
        write_atomic(config_dir / "policy.yaml", POLICY if via_gateway else "{}\n")
        with run_daemon(config_dir, gateway=True, timeout=60) as daemon:
            fake = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
            if via_gateway:  # before class: the pin loads the model, nobody waits for it
                loaded = lambda: fake.get("/_fake/stats").json()["loads"].get(BIG, 0) >= 1  # noqa: E731
                wait_until(loaded, 40, "the pinned model loaded")
            base = daemon.gateway_url if via_gateway else f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=60) as client:
                latencies = replay(client)
            stats = fake.get("/_fake/stats").json()
            fake.close()
    loads = int(stats["loads"].get(BIG, 0))
    waited = sum(latencies)
    return {
        "variant": "gateway" if via_gateway else "direct",
        "requests": len(latencies),
        "loads": loads,
        "loads_during_class": loads - (1 if via_gateway else 0),
        "unloads": int(stats["unloads"].get(BIG, 0)),
        "waited_s": waited,
        "cold_waits": sum(1 for x in latencies if x > load_s / 2),
        "load_wait_real_min": (loads - (1 if via_gateway else 0)) * LOAD_MINUTES,
        "max_wait_s": max(latencies),
        "latencies_s": latencies,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    direct, gateway = run_variant(False), run_variant(True)
    result = {
        "scale": SCALE,
        "load_s": LOAD_MINUTES * 60 / SCALE,
        "participants": len(GAPS_MINUTES),
        "direct": direct,
        "gateway": gateway,
        "waiting_ratio": direct["waited_s"] / max(gateway["waited_s"], 1e-9),
    }
    print(
        f"classroom replay: {len(GAPS_MINUTES)} participants x {len(CALL_SITES)} calls, "
        f"time scaled 1:{SCALE:g} (a {LOAD_MINUTES} min load = {result['load_s']:.2f} s)"
    )
    for row in (direct, gateway):
        print(
            f"  {row['variant']:8} loads during class {row['loads_during_class']:3d}, unloads "
            f"{row['unloads']:3d}; requests that waited for a load {row['cold_waits']:2d} "
            f"(= {row['load_wait_real_min']:5.1f} min in the real classroom); all requests "
            f"together {row['waited_s']:5.2f} s, longest {row['max_wait_s']:.2f} s"
        )
    print(f"  waiting, direct / gateway: {result['waiting_ratio']:.0f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if gateway["loads_during_class"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
