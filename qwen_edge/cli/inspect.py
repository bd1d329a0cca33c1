"""`qwen-edge inspect`: a Hugging Face checkpoint's config, parameters by part and sizes."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import fmt_bytes

HELP = "show a Hugging Face checkpoint's config, parameters and sizes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint folder (config.json + safetensors)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    from ..formats.checkpoint import Checkpoint

    summary = Checkpoint(args.checkpoint).summary()
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


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
        lines.append(f"  {bits:>4} bits/weight  {fmt_bytes(size):>10}")
    return "\n".join(lines)
