"""`qwen-edge serve`: the OpenAI-compatible HTTP API (docs/serving.md)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..errors import QwenEdgeError
from .common import (
    add_board_argument,
    add_context_argument,
    add_kv_cache_argument,
    add_power_arguments,
    add_speculative_arguments,
    apply_board,
    finish_power,
    fit_context,
    generation_overrides,
    govern,
    open_power,
)

HELP = "serve a model over an OpenAI-compatible HTTP API"
API_KEY_ENV = "QWEN_EDGE_API_KEY"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (.qe) or checkpoint folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", help="the model id clients see (default: the file name)")
    p.add_argument("--threads", type=int, help="native worker threads (default: all cores)")
    add_context_argument(p)
    add_kv_cache_argument(p)
    add_board_argument(p)
    add_power_arguments(p)
    add_speculative_arguments(p)
    g = p.add_argument_group("access and limits")
    g.add_argument(
        "--api-key",
        help=f"require 'Authorization: Bearer KEY' on every route but /health (or set "
        f"${API_KEY_ENV}; visible in the process list, so prefer the variable or --api-key-file)",
    )
    g.add_argument("--api-key-file", type=Path, help="read the API key from this file")
    g.add_argument(
        "--max-queue", type=int, default=16,
        help="requests that may wait for the model; more are answered 429 (default 16)",
    )  # fmt: skip
    g.add_argument(
        "--max-batch", type=int, default=4,
        help="requests that generate together, one batched model step for all (default 4)",
    )  # fmt: skip
    g.add_argument(
        "--prefill-chunk", type=int, default=64,
        help="the most prompt tokens a joining request prefills per step while others decode "
        "(64)",
    )  # fmt: skip
    g.add_argument(
        "--prefill-share", type=float, default=0.4,
        help="a step that prefills a joining request beside decoding ones may take at most "
        "1 + this times their decode step alone (measured as it runs; default 0.4: at most 1.4x)",
    )  # fmt: skip
    g.add_argument(
        "--cache-mb", type=float, default=256.0,
        help="megabytes of prompt-prefix snapshots (system prompts, chat histories) kept so "
        "later requests skip their prefill; 0 disables (default 256)",
    )  # fmt: skip
    g.add_argument(
        "--max-tokens-cap", type=int,
        help="the most tokens one request may ask for (default: 4096, or the context if less)",
    )  # fmt: skip
    g.add_argument(
        "--read-timeout", type=float, default=30.0,
        help="seconds a client has to send its whole request; also the write timeout (30)",
    )  # fmt: skip
    g.add_argument(
        "--max-connections", type=int, default=256,
        help="connections served at once; more are answered 503 (default 256)",
    )  # fmt: skip
    g.add_argument(
        "--drain-timeout", type=float, default=30.0,
        help="on SIGTERM, seconds running requests may take to finish before they are ended "
        "(default 30); Ctrl-C ends them at once",
    )  # fmt: skip


def api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key, --api-key-file or $QWEN_EDGE_API_KEY, in that order."""
    key = args.api_key
    if key is None and args.api_key_file is not None:
        try:
            key = args.api_key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise QwenEdgeError(f"cannot read the API key file {args.api_key_file}: {e}") from e
    if key is None:
        key = os.environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise QwenEdgeError("the API key is empty")
    return key.strip() if key is not None else None


def _check_limits(args: argparse.Namespace) -> None:
    checks = [
        (0 <= args.port <= 65535, "--port must be in [0, 65535]"),
        (args.max_queue >= 0, "--max-queue must be >= 0"),
        (args.max_batch >= 1, "--max-batch must be >= 1"),
        (args.prefill_chunk >= 1, "--prefill-chunk must be >= 1"),
        (0 < args.prefill_share < 1e6, "--prefill-share must be > 0"),
        (0 <= args.cache_mb < 1e7, "--cache-mb must be >= 0"),
        (args.max_tokens_cap is None or args.max_tokens_cap > 0, "--max-tokens-cap must be > 0"),
        (0 < args.read_timeout < 1e6, "--read-timeout must be a positive number of seconds"),
        (args.max_connections > 0, "--max-connections must be > 0"),
        (0 <= args.drain_timeout < 1e6, "--drain-timeout must be >= 0 seconds"),
    ]
    for ok, message in checks:
        if not ok:
            raise QwenEdgeError(message)


def run(args: argparse.Namespace) -> int:
    from ..generation.llm import load
    from ..serving.server import serve

    _check_limits(args)
    # --speculative, --draft-tokens: every request's default; a request speculates while it is
    # alone in the batch (docs/serving.md)
    speculative = generation_overrides(args)
    key = api_key(args)
    board = apply_board(args)  # --board: threads, context and cores where the user gave none
    power = open_power(args, board)
    llm = load(
        args.model, threads=args.threads, kv_cache=args.kv_cache, cache_mb=args.cache_mb,
        context=None if args.context == "max" else args.context,
    )  # fmt: skip
    fit_context(llm, args)
    llm.generation_config = llm.generation_config.replace(**speculative)
    # The scheduler runs every request's forward passes, so the governor paces them all (one
    # batched step counts as one pass: docs/serving.md).
    governor = govern(llm, power, args)
    name = args.model_name or Path(args.model).stem
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        server = serve(
            llm, args.host, args.port, name, api_key=key, max_queue=args.max_queue,
            max_batch=args.max_batch, prefill_chunk=args.prefill_chunk,
            prefill_share=args.prefill_share, max_tokens_cap=args.max_tokens_cap,
            read_timeout=args.read_timeout, max_connections=args.max_connections,
        )  # fmt: skip
    except OSError as e:
        raise QwenEdgeError(f"cannot listen on {args.host}:{args.port}: {e}") from e
    stopper: list[threading.Thread] = []

    def on_signal(signum: int, frame: Any) -> None:
        if stopper:  # a second signal: stop now (the scheduler is still joined on the way out)
            raise KeyboardInterrupt
        timeout = args.drain_timeout if signum == signal.SIGTERM else 0.0
        thread = threading.Thread(target=server.drain_and_stop, args=(timeout,), daemon=True)
        stopper.append(thread)
        thread.start()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    host, port = server.server_address[:2]
    auth = "API key required" if key else "no API key"
    print(f"serving {name} on http://{host}:{port}/v1 (OpenAI API; {auth}; Ctrl-C stops)",
          flush=True)  # fmt: skip
    try:
        server.serve_forever()
        if stopper:
            stopper[0].join()
    finally:
        server.server_close()  # stops the scheduler's threads before the interpreter tears down
        finish_power(governor, power)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
