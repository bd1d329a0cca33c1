"""`qwen-edge serve`: the OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    add_board_argument,
    add_kv_cache_argument,
    add_power_arguments,
    apply_board,
    finish_power,
    govern,
    open_power,
)

HELP = "serve a model over an OpenAI-compatible HTTP API"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (.qe) or checkpoint folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", help="the model id clients see (default: the file name)")
    p.add_argument("--threads", type=int, help="native worker threads (default: all cores)")
    p.add_argument("--context", type=int, help="context length in tokens")
    add_kv_cache_argument(p)
    add_board_argument(p)
    add_power_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..generation.llm import load
    from ..serving.server import serve

    board = apply_board(args)  # --board: threads, context and cores where the user gave none
    power = open_power(args, board)
    llm = load(args.model, threads=args.threads, context=args.context, kv_cache=args.kv_cache)
    # The one worker runs every request's forward passes, so the governor paces them all.
    governor = govern(llm, power, args)
    name = args.model_name or Path(args.model).stem
    server = serve(llm, args.host, args.port, name)
    host, port = server.server_address[:2]
    print(f"serving {name} on http://{host}:{port}/v1 (OpenAI API; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        finish_power(governor, power)
    return 0
