"""`qwen-edge export`: a Hugging Face checkpoint into one model file (or an ONNX graph)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import QwenEdgeError
from ..export.convert import QUANTIZERS, RECIPES
from .common import fmt_bytes, progress_bar

HELP = "convert a Hugging Face checkpoint into one model file (.qe) or an ONNX graph (.onnx)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint",
        help="checkpoint folder (config.json + safetensors); for --format onnx also a .qe file",
    )
    p.add_argument("-o", "--output", required=True, help="file to write (.qe or .onnx)")
    p.add_argument(
        "--format", choices=["qe", "onnx"],
        help="qe: the native model file; onnx: an onnxruntime graph with the same weights "
        "(docs/onnx.md). Default: from the output's suffix",
    )  # fmt: skip
    p.add_argument(
        "--quant", choices=list(RECIPES), default=None,
        help="recipe (default q4; q4s for onnx): "
        + "; ".join(f"{r.name}: {r.description}" for r in RECIPES.values()),
    )  # fmt: skip
    p.add_argument(
        "--override", action="append", metavar="GLOB=FORMAT",
        help="store the tensors matching GLOB in FORMAT (repeatable; last match wins), "
        "e.g. 'layers.*.mlp.down_proj.weight=q8g32'",
    )  # fmt: skip
    p.add_argument("--mtp", action="store_true", help="also store the MTP head's tensors (qe)")
    p.add_argument(
        "--calibration", metavar="FILE",
        help="qe: activation-aware quantization: weigh each matrix's rounding error by its "
        "inputs' mean square per channel, from FILE (.npz of tools/activation_stats.py "
        "--calibration; docs/export.md). Default: unweighted",
    )  # fmt: skip
    p.add_argument(
        "--genai", action="store_true",
        help="onnx: also write genai_config.json and tokenizer files for onnxruntime-genai",
    )  # fmt: skip
    p.add_argument(
        "--genai-threads", type=int, default=0,
        help="onnx --genai: intra_op_num_threads in genai_config.json (default 0: all cores)",
    )  # fmt: skip
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
    fmt = args.format or ("onnx" if out.suffix == ".onnx" else "qe")
    if fmt == "onnx":
        return _run_onnx(args, out, overrides)
    if args.genai:
        raise QwenEdgeError("--genai goes with --format onnx")
    if args.calibration and not Path(args.calibration).is_file():
        raise QwenEdgeError(f"--calibration: {args.calibration} is not a file")
    recipe = args.quant or "q4"
    print(f"exporting {args.checkpoint} -> {out} (recipe {recipe})", file=sys.stderr)
    summary = export(
        args.checkpoint,
        out,
        recipe,
        overrides,
        keep_mtp=args.mtp,
        progress=progress_bar("quantizing"),
        quantizer=args.quantizer,
        threads=args.threads,
        calibration=args.calibration,
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


def _run_onnx(args: argparse.Namespace, out: Path, overrides: dict[str, str]) -> int:
    from ..export.onnx_export import export_onnx

    if out.suffix != ".onnx":
        raise QwenEdgeError(f"{out}: an ONNX graph's file name ends in .onnx")
    if args.mtp:
        raise QwenEdgeError("--mtp: the ONNX graph holds the text model only")
    if args.calibration:
        raise QwenEdgeError("--calibration: export a calibrated .qe, then the graph from it")
    from_file = Path(args.checkpoint).is_file()
    if from_file and args.quant:
        raise QwenEdgeError("--quant: a .qe source keeps its own weights; omit it")
    recipe = args.quant or "q4s"
    what = "its stored weights" if from_file else f"recipe {recipe}"
    print(f"exporting {args.checkpoint} -> {out} (ONNX, {what})", file=sys.stderr)
    summary = export_onnx(
        args.checkpoint,
        out,
        recipe,
        overrides,
        genai=args.genai,
        threads=args.genai_threads,
    )
    report = {
        "path": str(summary.path),
        "data_path": str(summary.data_path),
        "recipe": summary.recipe,
        "file_bytes": summary.file_bytes,
        "seconds": round(summary.seconds, 1),
        "formats": summary.formats,
        "genai": summary.genai,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    fmts = ", ".join(f"{f} x{n}" for f, n in sorted(summary.formats.items()))
    print(f"wrote {out} (+ {summary.data_path.name})")
    print(f"  size          {fmt_bytes(summary.file_bytes)}")
    print(f"  formats       {fmts}")
    if summary.genai:
        print(f"  genai         {out.parent / 'genai_config.json'} (onnxruntime-genai)")
    print(f"  time          {summary.seconds:.1f} s")
    return 0
