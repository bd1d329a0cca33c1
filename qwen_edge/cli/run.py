"""`qwen-edge run`: continue a prompt, or answer it as a chat turn."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .common import (
    add_generation_arguments,
    add_model_arguments,
    add_power_arguments,
    apply_board,
    finish_power,
    generation_overrides,
    govern,
    load_model,
    open_power,
    prompt_progress,
    read_text,
    stats_line,
    stream_to,
)

HELP = "continue a prompt (or answer it with --chat)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("-p", "--prompt", required=True, help="the prompt text, or - for stdin")
    p.add_argument("--chat", action="store_true", help="send the prompt as a chat user turn")
    p.add_argument("--system", help="system prompt (with --chat)")
    p.add_argument(
        "--special", action="store_true", help="parse control tokens such as <|im_start|>"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object with timings")
    p.add_argument("-v", "--verbose", action="store_true", help="print timings to stderr")
    add_generation_arguments(p)
    add_power_arguments(p)


def run(args: argparse.Namespace) -> int:
    prompt = read_text(args.prompt, "the prompt")
    overrides = generation_overrides(args)
    power = open_power(args, apply_board(args, set_affinity=False))
    llm = load_model(args)
    governor = govern(llm, power, args)
    stream = not args.json
    progress = prompt_progress()
    try:
        if args.chat:
            messages = [{"role": "user", "content": prompt}]
            if args.system:
                messages.insert(0, {"role": "system", "content": args.system})
            out = llm.chat(
                messages,
                stream=stream,
                enable_thinking=args.think or None,
                progress=progress,
                **overrides,
            )
        else:
            out = llm.generate(
                prompt, stream=stream, allowed_special=args.special, progress=progress, **overrides
            )
        last = out if args.json else stream_to(sys.stdout, out)
    finally:
        report = finish_power(governor, power)  # restores CPU clock caps even on an error
    if args.json:
        record = _run_json(out)
        if report is not None:
            record["power"] = report
        print(json.dumps(record, ensure_ascii=False))
        return 0
    print()
    if args.verbose:
        print(stats_line(last.stats, last.finish_reason), file=sys.stderr)
    return 0


def _run_json(result: Any) -> dict[str, Any]:
    return {
        "text": result.text,
        "tokens": result.tokens,
        "finish_reason": result.finish_reason,
        "stop": result.stop,
        "prompt_tokens": len(result.prompt_tokens),
        "generated_tokens": len(result.tokens),
        "timings": result.stats.to_dict(),
    }
