"""`qwen-edge export`: a Hugging Face checkpoint into one model file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..export.convert import QUANTIZERS, RECIPES
from .common import fmt_bytes, progress_bar

HELP = "convert a Hugging Face checkpoint into one model file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint folder (config.json + safetensors)")
    p.add_argument("-o", "--output", required=True, help="model file to write (.qe)")
    p.add_argument(
        "--quant", choices=list(RECIPES), default="q4",
        help="recipe: " + "; ".join(f"{r.name}: {r.description}" for r in RECIPES.values()),
    )  # fmt: skip
    p.add_argument(
        "--override", action="append", metavar="GLOB=FORMAT",
        help="store the tensors matching GLOB in FORMAT (repeatable; last match wins), "
        "e.g. 'layers.*.mlp.down_proj.weight=q8g32'",
    )  # fmt: skip
    p.add_argument("--mtp", action="store_true", help="also store the MTP head's tensors")
    p.add_argument(
        "--quantizer", choices=QUANTIZERS, default="auto",
        help="who quantizes: the native core (multithreaded), python (numba/numpy), or auto "
        "(native when built); the file is the same byte for byte",
    )  # fmt: skip
    p.add_argument(
        "--threads", type=int, default=None,
        help="threads of the native quantizer (default: every CPU this process may use)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from ..export.convert import export, parse_overrides

    overrides = parse_overrides(args.override)
    out = Path(args.output)
    print(f"exporting {args.checkpoint} -> {out} (recipe {args.quant})", file=sys.stderr)
    summary = export(
        args.checkpoint,
        out,
        args.quant,
        overrides,
        keep_mtp=args.mtp,
        progress=progress_bar("quantizing"),
        quantizer=args.quantizer,
        threads=args.threads,
    )
    report = {
        "path": str(summary.path),
        "recipe": summary.recipe,
        "file_bytes": summary.file_bytes,
        "parameters": summary.parameters,
        "bits_per_weight": round(summary.bits_per_weight, 4),
        "seconds": round(summary.seconds, 1),
        "quantizer": args.quantizer,
        "formats": summary.formats,
        "mtp": summary.mtp,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    fmts = ", ".join(
        f"{f} x{n} ({summary.format_parameters[f] / 1e6:.1f}M params)"
        for f, n in sorted(summary.formats.items())
    )
    print(f"wrote {out}")
    print(f"  size          {fmt_bytes(summary.file_bytes)}")
    bpw = summary.bits_per_weight
    print(f"  weights       {summary.parameters:,} parameters, {bpw:.3f} bits/weight")
    print(f"  formats       {fmts}")
    print(f"  MTP head      {'kept' if summary.mtp else 'not stored (use --mtp to keep it)'}")
    print(f"  time          {summary.seconds:.1f} s")
    return 0
