"""`qwen-edge bench`: load, prefill, TTFT, decode, peak RSS; with `--power` the energy of each
phase; with `--power-budget`/`--tokens-per-second` a governed decode; `--sweep` over models,
threads, contexts and budgets into JSON lines for `qwen-edge report`."""

from __future__ import annotations

import argparse
import json

from ..errors import QwenEdgeError
from .common import (
    add_board_argument,
    add_kv_cache_argument,
    add_power_arguments,
    add_speculative_arguments,
    apply_board,
    generation_overrides,
    open_power,
    prompt_progress,
)

HELP = "measure load, prefill, TTFT, decode, peak RSS and energy (JSON; --sweep: JSON lines)"


def _numbers(text: str, kind: type, what: str) -> tuple:
    try:
        values = tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise QwenEdgeError(f"{what} must be comma-separated numbers, not '{text}'") from None
    if not values or any(v <= 0 for v in values):
        raise QwenEdgeError(f"{what} must be positive numbers, not '{text}'")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="model", help="model file (.qe); several: --sweep")
    p.add_argument("--threads", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--prompt", type=int, default=512, help="prefill prompt tokens (default 512)")
    p.add_argument("--decode", type=int, default=128, help="decode steps (default 128)")
    p.add_argument("--decode-prompt", type=int, default=16, help="prompt before decoding")
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--isa", help="force a kernel table (default: the best for this CPU)")
    add_kv_cache_argument(p)
    p.add_argument("--no-bandwidth", action="store_true", help="skip the memory read test")
    p.add_argument("--json", metavar="FILE", help="also write the JSON record ('-': print it)")
    add_speculative_arguments(p)
    add_board_argument(p)
    p.add_argument("--power", action="store_true", help="measure energy per phase (a sensor)")
    add_power_arguments(p)
    p.add_argument(
        "--budget-seconds", type=float, default=30.0, help="length of the governed decode (s)"
    )
    p.add_argument(
        "--min-phase-seconds", type=float, default=3.0, help="with power: shortest phase (s)"
    )
    s = p.add_argument_group("sweep (docs/energy.md)")
    s.add_argument("--sweep", action="store_true", help="every model x context x threads x budget")
    s.add_argument("--contexts", default="16", help="tokens in context when decoding (sweep)")
    s.add_argument("--budgets", help="comma-separated power budgets in W (sweep)")
    s.add_argument("-o", "--out", default="results.jsonl", help="JSON lines file (appended)")


def run(args: argparse.Namespace) -> int:
    from ..evaluation import bench, sweep

    board = apply_board(args)
    threads = _numbers(str(args.threads or "1,2"), int, "--threads")
    budgets = _numbers(args.budgets, float, "--budgets") if args.budgets else ()
    if len(args.models) > 1 and not args.sweep:
        raise QwenEdgeError("several models are compared with --sweep (one JSON line each)")
    spec = generation_overrides(args)
    cfg = bench.BenchConfig(
        speculative=spec.get("speculative"),
        draft_tokens=spec.get("draft_tokens", bench.BenchConfig.draft_tokens),
        threads=threads,
        prompt=args.prompt,
        decode=args.decode,
        decode_prompt=args.decode_prompt,
        repetitions=args.repetitions,
        warmup=args.warmup,
        isa=args.isa,
        kv_cache=args.kv_cache,
        measure_bandwidth=not args.no_bandwidth and not args.sweep,
        budget_w=args.power_budget,
        tokens_per_s=args.tokens_per_second,
        budget_seconds=args.budget_seconds,
        min_phase_seconds=args.min_phase_seconds,
    )
    power = open_power(args, board, measure=args.power or bool(budgets))
    try:
        if args.sweep:
            grid = sweep.SweepConfig(
                models=tuple(args.models),
                threads=threads,
                contexts=_numbers(args.contexts, int, "--contexts"),
                budgets=budgets,
                bench=cfg,
            )

            def show(row: dict) -> None:
                d = row.get("decode") or {}
                print(
                    f"{row['model']} threads {row['threads']} context {row['context']}"
                    + (f" budget {row['budget_w']:g} W" if row.get("budget_w") else "")
                    + f": decode {row['decode_tok_s']:.1f} tok/s"
                    + (f", {d['watts']:.2f} W, {d['j_per_token']:.4f} J/token" if d else ""),
                    flush=True,
                )

            n = sweep.write_rows(sweep.sweep(grid, power), args.out, show)
            print(f"wrote {n} rows to {args.out}")
            return 0
        record = bench.run(args.models[0], cfg, power, progress=prompt_progress())
        if board is not None:
            record["board"] = board.name
    finally:
        if power is not None:
            power.monitor.stop()
    if args.json == "-":
        print(json.dumps(record, indent=2))
    else:
        print(bench.format_table(record))
        if args.json:
            bench.write_json(record, args.json)
            print(f"wrote {args.json}")
    return 0
