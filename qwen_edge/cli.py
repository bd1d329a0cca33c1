"""The `qwen-edge` command line: the only place that prints for users and picks exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import QwenEdgeError

EXIT_ERROR = 1
EXIT_USAGE = 2


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qwen-edge"


# --- inspect ------------------------------------------------------------------------------------
def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable form of `Checkpoint.summary()`."""
    cfg, par = s["config"], s["parameters"]
    kinds = "".join("F" if t == "full_attention" else "L" for t in cfg["layer_types"])
    layout = {
        "wrapper": "hub multimodal wrapper (model.language_model.*)",
        "text": "text-only (model.*)",
    }
    lines = [
        f"checkpoint   {s['path']}",
        f"layout       {layout[s['layout']]}, {len(s['files'])} file(s), {'/'.join(s['dtypes'])}",
        f"architecture {', '.join(s['architectures']) or '?'} (model_type {s['model_type']})",
        "",
        "text config",
    ]
    keys = [
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "linear_num_key_heads",
        "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
        "linear_conv_kernel_dim", "rms_norm_eps", "rope_theta", "partial_rotary_factor",
        "tie_word_embeddings", "max_position_embeddings", "eos_token_id",
    ]  # fmt: skip
    lines += [f"  {k:<26} {cfg[k]}" for k in keys]
    lines.append(f"  {'layer_types':<26} {kinds}  (L = gated DeltaNet, F = full attention)")
    lines += ["", "parameters"]

    def row(label: str, n: int, note: str = "") -> str:
        return f"  {label:<34} {n:>15,}{('  ' + note) if note else ''}"

    lines.append(row("embeddings", par["embeddings"]))
    lines.append(
        row(
            "lm head",
            par["lm_head"],
            "(tied to the embeddings)" if cfg["tie_word_embeddings"] else "",
        )
    )
    for kind, label in (
        ("linear_attention", "gated DeltaNet layers"),
        ("full_attention", "full-attention layers"),
    ):
        p = par[kind]
        lines.append(row(f"{label} (x{p['layers']})", p["total"]))
        lines.append(row("  mixer", p["mixer"]))
        lines.append(row("  MLP", p["mlp"]))
        lines.append(row("  norms", p["norms"]))
    lines.append(row("final norm", par["final_norm"]))
    lines.append(row("text model total", par["text_total"]))
    for part, label in (("vision", "vision tower"), ("mtp", "MTP head")):
        p = par[part]
        note = (
            f"({p['tensors']} tensors, not used by the text model)" if p["tensors"] else "(absent)"
        )
        lines.append(row(label, p["parameters"], note))
    if par["ignored_tensors"]:
        lines.append(f"  ignored: {', '.join(par['ignored_tensors'][:5])}")
    lines += ["", "text model size"]
    for bits, size in s["text_size_bytes"].items():
        lines.append(f"  {bits:>4} bits/weight  {_fmt_bytes(size):>10}")
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .export.hf import Checkpoint

    summary = Checkpoint(args.checkpoint).summary()
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


# --- info ---------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from . import __version__
    from .runtime import cpu_report

    report = {"version": __version__, "python": sys.version.split()[0], **cpu_report()}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            print(f"{key:<15} {shown}")
    return 0


# --- demo ---------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from . import presets
    from .export.demo import write_random_checkpoint
    from .export.hf import Checkpoint
    from .reference import ReferenceModel

    out = Path(args.dir) if args.dir else _default_cache() / "demo" / "tiny-checkpoint"
    print(f"writing a random-weight Qwen3.5 checkpoint ('tiny' preset) to {out}")
    write_random_checkpoint(out, presets.hf_config("tiny"), seed=args.seed)
    ckpt = Checkpoint(out)
    print(format_summary(ckpt.summary()))
    model = ReferenceModel.from_checkpoint(ckpt)
    prompt = np.random.default_rng(args.seed).integers(0, 248000, 16).tolist()
    state = model.new_state()
    start = time.perf_counter()
    logits = model.forward(prompt, state)
    generated = []
    for _ in range(args.tokens):
        token = int(np.argmax(logits))
        generated.append(token)
        logits = model.step(token, state)
    elapsed = time.perf_counter() - start
    print("\nnumpy reference model, RANDOM WEIGHTS (the output is meaningless by design)")
    print(f"  prompt ids    {prompt}")
    print(f"  greedy ids    {generated}")
    print(f"  {len(generated)} tokens in {elapsed:.2f} s")
    return 0


# --- bench --------------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

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


# --- main ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen-edge", description="Edge inference runtime for Qwen3.5 small language models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "inspect", help="show a Hugging Face checkpoint's config, parameters and sizes"
    )
    p.add_argument("checkpoint", help="checkpoint folder (config.json + safetensors)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("info", help="show CPU features and the kernel variants this machine runs")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="build a small random-weight model and run it (no download)")
    p.add_argument("--dir", help="where to write the demo checkpoint (default: ~/.cache/qwen-edge)")
    p.add_argument("--tokens", type=int, default=16, help="tokens to generate")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="measure load, prefill, TTFT, decode and peak RSS (JSON)")
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
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except QwenEdgeError as e:
        print(f"qwen-edge: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("qwen-edge: interrupted", file=sys.stderr)
        return 130
