"""`qwen-edge bench`: load time, prefill, time to first token, decode and peak RSS (JSON)."""

from __future__ import annotations

import argparse
import json

HELP = "measure load, prefill, TTFT, decode and peak RSS (JSON)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (.qe)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--prompt", type=int, default=512, help="prefill prompt tokens (default 512)")
    p.add_argument("--decode", type=int, default=128, help="decode steps (default 128)")
    p.add_argument("--decode-prompt", type=int, default=16, help="prompt before decoding")
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--isa", help="force a kernel table (default: the best for this CPU)")
    p.add_argument("--no-bandwidth", action="store_true", help="skip the memory read test")
    p.add_argument("--json", metavar="FILE", help="also write the JSON record ('-': print it)")


def run(args: argparse.Namespace) -> int:
    from ..evaluation import bench

    cfg = bench.BenchConfig(
        threads=tuple(int(t) for t in args.threads.split(",")),
        prompt=args.prompt,
        decode=args.decode,
        decode_prompt=args.decode_prompt,
        repetitions=args.repetitions,
        warmup=args.warmup,
        isa=args.isa,
        measure_bandwidth=not args.no_bandwidth,
    )
    record = bench.run(args.model, cfg)
    if args.json == "-":
        print(json.dumps(record, indent=2))
    else:
        print(bench.format_table(record))
        if args.json:
            bench.write_json(record, args.json)
            print(f"wrote {args.json}")
    return 0
