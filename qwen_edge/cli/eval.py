"""`qwen-edge eval`: KL divergence, top-1 agreement and perplexity of a model file vs fp32."""

from __future__ import annotations

import argparse
import json

from .common import progress_bar

HELP = "KL divergence / top-1 / perplexity of a model file vs fp32"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (.qe)")
    p.add_argument("--reference", required=True, help="the checkpoint folder it came from")
    p.add_argument(
        "--text", metavar="FILE",
        help="evaluate on this text instead of the shipped one: a token file (.json with an "
        "'ids' list, e.g. the held-out split tools/train_small.py writes) or UTF-8 text, "
        "tokenized with the checkpoint's tokenizer",
    )  # fmt: skip
    p.add_argument("--tokens", type=int, help="use only the first N tokens of the text")
    p.add_argument("--ctx", type=int, default=512, help="window length (default 512)")
    p.add_argument(
        "--act-q8", action="store_true",
        help="also round the inputs of integer matrices through q8a, as the native kernels do",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    from ..evaluation.quality import evaluate

    report = evaluate(
        args.model,
        args.reference,
        tokens=args.tokens,
        ctx=args.ctx,
        act_q8=args.act_q8,
        text=args.text,
        progress=None if args.json else progress_bar("evaluating", unit="window"),
    )
    d = report.to_dict()
    if args.json:
        doc = {"model": args.model, "reference": args.reference, "text": args.text, **d}
        print(json.dumps(doc, indent=2))
        return 0
    text = args.text or "the shipped text"
    print(f"{args.model} vs fp32 {args.reference} on {text}, {report.tokens} positions")
    print(f"  mean KL       {report.mean_kl:.6f} nats")
    print(f"  p99 KL        {report.p99_kl:.6f} nats")
    print(f"  top-1 agree   {100 * report.top1:.2f} %")
    ppl = f"{report.ppl_model:.4g} vs {report.ppl_ref:.4g} (ratio {report.ppl_ratio:.5f})"
    print(f"  perplexity    {ppl}")
    return 0
