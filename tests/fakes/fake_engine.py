#!/usr/bin/env python3
"""A fake engine server for process-level tests: stdlib only, starts in milliseconds.

Speaks enough of vLLM (``/health``, ``/v1/models``, ``/v1/chat/completions``) or Ollama
(``/api/version``) for readiness and liveness, and misbehaves on request: slow start, failing
or hanging health, slow replies, ignoring SIGTERM, exiting after a while, spawning
grandchildren (also in their own session), flooding output, printing giant lines or vLLM-like
loading phases, or dying of SIGPIPE on a write to a pipe nobody reads any more, as a Go
program (Ollama) does.
Unknown flags are accepted, as a real engine's argv carries many.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLEEPER = [
    sys.executable,
    "-c",
    "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(10**6)",
]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--mode", choices=["vllm", "ollama"], default="vllm")
    p.add_argument("--model", default="fake-model")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--startup-delay", type=float, default=0.0)
    p.add_argument("--fail-health-after", type=float, default=None, help="liveness 500s after S")
    p.add_argument("--hang-after", type=float, default=None, help="stop answering after S")
    p.add_argument("--ignore-term", action="store_true")
    p.add_argument("--exit-after", type=float, default=None)
    p.add_argument("--exit-code", type=int, default=1)
    p.add_argument("--children", type=int, default=0, help="grandchildren in our group")
    p.add_argument("--setsid-children", type=int, default=0, help="grandchildren in own session")
    p.add_argument("--flood", type=int, default=0, help="lines per second of noise")
    p.add_argument("--long-line", type=int, default=0, help="print one line of N bytes")
    p.add_argument("--loading-lines", action="store_true", help="print vLLM-like load phases")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-position-embeddings", type=int, default=4096)
    p.add_argument("--fail-with", default=None, help="print this line then exit 1 at start")
    p.add_argument(
        "--api-key", default=os.environ.get("VLLM_API_KEY"),
        help="as vLLM: /v1/* answers 401 without 'Authorization: Bearer KEY'; /health is open",
    )  # fmt: skip
    p.add_argument("--first-request-delay", type=float, default=0.0, help="first POST waits S")
    p.add_argument("--reply-delay", type=float, default=0.0, help="answer /v1 requests after S")
    p.add_argument("--go-sigpipe", action="store_true", help="die of SIGPIPE, as Go does")
    p.add_argument("--heartbeat", type=float, default=None, help="print a line every S")
    args, _unknown = p.parse_known_args()
    return args


def main() -> None:
    args = parse()
    name = args.served_model_name or args.model
    if args.go_sigpipe:
        # Python ignores SIGPIPE (a write to a reader-less pipe raises BrokenPipeError); a
        # Go program writing to stdout/stderr is killed by it instead (os/signal docs).
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    print(f"fake engine pid={os.getpid()} mode={args.mode} port={args.port}", flush=True)
    if args.api_key:  # as vLLM's api_server logs them at start
        print(f"INFO non-default args: {{'api_key': ['{args.api_key}']}}", flush=True)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for _ in range(args.children):
        subprocess.Popen(SLEEPER)
    for _ in range(args.setsid_children):
        subprocess.Popen(SLEEPER, start_new_session=True)
    if args.long_line:
        sys.stdout.write("x" * args.long_line + "\n")
        sys.stdout.flush()
    if args.fail_with:
        print(args.fail_with, flush=True)
        sys.exit(1)
    if args.max_model_len and args.max_model_len > args.max_position_embeddings:
        fail_max_model_len(args.max_model_len, args.max_position_embeddings)
    if args.loading_lines:
        print_loading(args.startup_delay)
    elif args.startup_delay:
        time.sleep(args.startup_delay)
    started = time.monotonic()
    if args.flood:
        threading.Thread(target=flood, args=(args.flood,), daemon=True).start()
    if args.heartbeat:
        threading.Thread(target=heartbeat, args=(args.heartbeat,), daemon=True).start()
    if args.exit_after is not None:
        threading.Timer(args.exit_after, lambda: os._exit(args.exit_code)).start()
    serve(args, name, started)


def fail_max_model_len(value: int, limit: int) -> None:
    # Worded like vLLM's own check in vllm/config (wrapped by pydantic, as the real one is).
    print("pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig")
    print(
        f"  Value error, User-specified max_model_len ({value}) is greater than the derived "
        f"max_model_len (max_position_embeddings={limit} or model_max_length=None in model's "
        "config.json). To allow overriding this maximum, set the env var "
        "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1.",
        flush=True,
    )
    for i in range(120):
        print(f"shutdown noise line {i}")
    sys.exit(1)


def print_loading(total: float) -> None:
    step = total / 6 if total else 0
    for i in range(1, 5):
        print(
            f"Loading safetensors checkpoint shards: {i * 25}% Completed | {i}/4 [00:0{i}<00:00]",
            flush=True,
        )
        time.sleep(step)
    print("Memory profiling takes 1.2 seconds", flush=True)
    print("# GPU blocks: 1024, # CPU blocks: 512", flush=True)
    time.sleep(step)
    print("Capturing CUDA graphs: 100%|██████████| 67/67", flush=True)
    time.sleep(step)


def flood(per_second: int) -> None:
    n = 0
    while True:
        for _ in range(per_second):
            n += 1
            print(f"noise {n} \r progress {n}%", flush=False)
        sys.stdout.flush()
        time.sleep(1)


def heartbeat(every: float) -> None:
    n = 0
    while True:
        n += 1
        print(f"heartbeat {n} at {time.time():.3f}", flush=True)
        time.sleep(every)


def serve(args: argparse.Namespace, name: str, started: float) -> None:
    first_request = threading.Lock()  # held forever by the first POST: later ones don't wait

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *a: object) -> None:
            pass

        def _hanging(self) -> bool:
            return args.hang_after is not None and time.monotonic() - started > args.hang_after

        def _send(self, code: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _refused(self) -> bool:
            # vLLM's AuthenticationMiddleware: only /v1 paths, compared to "Bearer " + key.
            wanted = f"Bearer {args.api_key}"
            if (
                args.api_key
                and self.path.startswith("/v1")
                and (self.headers.get("Authorization") != wanted)
            ):
                self._send(401, {"error": "Unauthorized"})
                return True
            return False

        def do_GET(self) -> None:
            if self._refused():
                return
            if self._hanging():
                time.sleep(10**6)
            sick = (
                args.fail_health_after is not None
                and time.monotonic() - started > args.fail_health_after
            )
            if self.path == "/health" and args.mode == "vllm":
                self._send(500 if sick else 200, {})
            elif self.path == "/v1/models" and args.mode == "vllm":
                self._send(200, {"object": "list", "data": [{"id": name, "object": "model"}]})
            elif self.path == "/api/version" and args.mode == "ollama":
                self._send(500 if sick else 200, {"version": "0.0.0-fake"})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self._refused():
                return
            # One line per request, so tests can see what reached the engine (warm-ups).
            print(f"request POST {self.path} {json.dumps(body, sort_keys=True)}", flush=True)
            if first_request.acquire(blocking=False):
                time.sleep(args.first_request_delay)
            if self.path.startswith("/v1/"):
                time.sleep(args.reply_delay)  # a request that takes a while: still in flight
                text = "fake reply"
                self._send(
                    200,
                    {
                        "id": "cmpl-fake",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": text},
                                "text": text,
                            }
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
                    },
                )
            else:
                self._send(404, {"error": "not found"})

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"serving on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
