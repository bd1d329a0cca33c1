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


# --- export -------------------------------------------------------------------------------------
def _progress_bar(total_label: str) -> Any:
    """A (name, index, total) callback: tqdm when installed, else a line every ~10 %."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    state: dict[str, Any] = {"bar": None, "shown": -1}

    def update(name: str, index: int, total: int) -> None:
        if tqdm is not None:
            if state["bar"] is None:
                state["bar"] = tqdm(total=total, desc=total_label, unit="tensor", leave=False)
            state["bar"].set_postfix_str(name[-40:], refresh=False)
            state["bar"].n = index
            state["bar"].refresh()
            if index + 1 == total:
                state["bar"].close()
            return
        step = index * 10 // max(total, 1)
        if step != state["shown"]:
            state["shown"] = step
            print(f"  {total_label}: {index}/{total} {name}", file=sys.stderr, flush=True)

    return update


def cmd_export(args: argparse.Namespace) -> int:
    from .export.convert import export, parse_overrides

    overrides = parse_overrides(args.override)
    out = Path(args.output)
    print(f"exporting {args.checkpoint} -> {out} (recipe {args.quant})", file=sys.stderr)
    summary = export(
        args.checkpoint,
        out,
        args.quant,
        overrides,
        keep_mtp=args.mtp,
        progress=_progress_bar("quantizing"),
    )
    report = {
        "path": str(summary.path),
        "recipe": summary.recipe,
        "file_bytes": summary.file_bytes,
        "parameters": summary.parameters,
        "bits_per_weight": round(summary.bits_per_weight, 4),
        "seconds": round(summary.seconds, 1),
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
    print(f"  size          {_fmt_bytes(summary.file_bytes)}")
    bpw = summary.bits_per_weight
    print(f"  weights       {summary.parameters:,} parameters, {bpw:.3f} bits/weight")
    print(f"  formats       {fmts}")
    print(f"  MTP head      {'kept' if summary.mtp else 'not stored (use --mtp to keep it)'}")
    print(f"  time          {summary.seconds:.1f} s")
    return 0


# --- eval ---------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from .quality import evaluate

    report = evaluate(
        args.model,
        args.reference,
        tokens=args.tokens,
        ctx=args.ctx,
        act_q8=args.act_q8,
        progress=None if args.json else _progress_bar("evaluating"),
    )
    d = report.to_dict()
    if args.json:
        print(json.dumps({"model": args.model, "reference": args.reference, **d}, indent=2))
        return 0
    print(f"{args.model} vs fp32 {args.reference}, {report.tokens} positions")
    print(f"  mean KL       {report.mean_kl:.6f} nats")
    print(f"  p99 KL        {report.p99_kl:.6f} nats")
    print(f"  top-1 agree   {100 * report.top1:.2f} %")
    ppl = f"{report.ppl_model:.4g} vs {report.ppl_ref:.4g} (ratio {report.ppl_ratio:.5f})"
    print(f"  perplexity    {ppl}")
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

    from .export.convert import RECIPES

    p = sub.add_parser("export", help="convert a Hugging Face checkpoint into one model file")
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
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="KL divergence / top-1 / perplexity of a model file vs fp32")
    p.add_argument("model", help="model file (.qe)")
    p.add_argument("--reference", required=True, help="the checkpoint folder it came from")
    p.add_argument("--tokens", type=int, help="use only the first N tokens of the text")
    p.add_argument("--ctx", type=int, default=512, help="window length (default 512)")
    p.add_argument(
        "--act-q8", action="store_true",
        help="also round the inputs of integer matrices through q8a, as the native kernels do",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_eval)
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
