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

from .boards import add_board_argument, apply_board
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
    board = apply_board(args)
    if board is not None:
        from .boards import check_board, ram_gb

        ram = ram_gb()
        tier = board.tier(ram)
        report["board"] = board.name
        report["board_cpus"] = ", ".join(map(str, args.board_cpus or [])) or "all"
        report["board_threads"] = args.threads
        report["board_defaults"] = (
            f"{tier.model} {tier.recipe}, context {tier.context} "
            f"(RAM {f'{ram:.1f} GB' if ram else 'unknown'})"
        )
        report["board_warnings"] = check_board(board, report, report["available_isas"]) or "none"
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

    board = apply_board(args)
    if board is not None:
        print(f"board {board.name}: cores {args.board_cpus or 'all'}")

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


# --- boards -------------------------------------------------------------------------------------
def cmd_boards(args: argparse.Namespace) -> int:
    from .boards import list_boards, load_board

    if not args.name:
        for name in list_boards():
            print(f"{name:<18} {load_board(name).description}")
        return 0
    board = load_board(args.name)
    print(f"{board.name}: {board.description}")
    print(f"  cpu          {board.cores}; features {', '.join(board.features)}")
    print(f"  kernels      {board.expected_isa}")
    print(
        f"  cores        {board.cpus if board.cpus is not None else 'all'}, threads "
        f"{board.threads or 'one per core'}"
    )
    for t in board.memory:
        print(f"  RAM >= {t.min_ram_gb:>4g} GB  {t.model} {t.recipe}, context {t.context}")
    print(f"  power        {board.power.kind}: {board.power.notes}")
    print(f"  build        {board.build_notes}")
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
    add_board_argument(p)
    p.set_defaults(func=cmd_info, threads=None)

    p = sub.add_parser("demo", help="build a small random-weight model and run it (no download)")
    p.add_argument("--dir", help="where to write the demo checkpoint (default: ~/.cache/qwen-edge)")
    p.add_argument("--tokens", type=int, default=16, help="tokens to generate")
    p.add_argument("--seed", type=int, default=0)
    add_board_argument(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("boards", help="list the board profiles, or show one")
    p.add_argument("name", nargs="?", help="a board name (see the list)")
    p.set_defaults(func=cmd_boards)
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
