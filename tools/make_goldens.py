#!/usr/bin/env python3
"""Regenerates the transformers goldens in tests/data/goldens/.

Each golden is a small random-weight Qwen3.5 checkpoint written by transformers'
`save_pretrained` (see make_checkpoint.py) plus `golden.npz`: a 70-token prompt, the fp32 logits
transformers gives for it in one forward, then 16 greedy decode steps with its cache and their
logits. The variants differ where implementations go wrong: tied and untied heads, head counts
and dims, GQA ratios, 1-3 value heads per key head, layer-type orders, storage dtypes, both
checkpoint layouts. The default test run compares the numpy reference with these files, so it
needs no torch; `pytest -m reference` checks the same variants against live transformers.

    python tools/make_goldens.py            # needs torch==2.13.0 and transformers
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_checkpoint import add_mtp_shard, build_model

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "goldens"
PROMPT_LEN = 70  # more than one 64-token chunk of transformers' chunked delta rule
DECODE_STEPS = 16
VOCAB = 160

L, F = "linear_attention", "full_attention"
_BASE = {
    "vocab_size": VOCAB,
    "eos_token_id": VOCAB - 1,
    "linear_conv_kernel_dim": 4,
    "max_position_embeddings": 4096,
}
# name -> (text_config overrides, layout, dtype, with MTP)
VARIANTS: dict[str, tuple[dict, str, str, bool]] = {
    "tied-gqa4": (
        {
            "hidden_size": 32, "intermediate_size": 64, "layer_types": [L, L, L, F],
            "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 32,
            "linear_num_key_heads": 2, "linear_num_value_heads": 2,
            "linear_key_head_dim": 16, "linear_value_head_dim": 16, "tie_word_embeddings": True,
        },
        "wrapper", "bf16", True,
    ),
    "untied-r2-fullfirst": (
        {
            "hidden_size": 32, "intermediate_size": 64, "layer_types": [F, L, L, F, L],
            "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 64,
            "linear_num_key_heads": 2, "linear_num_value_heads": 4,
            "linear_key_head_dim": 16, "linear_value_head_dim": 16, "tie_word_embeddings": False,
        },
        "text", "bf16", False,
    ),
    "r3-dk-ne-dv-f32": (
        {
            "hidden_size": 24, "intermediate_size": 48, "layer_types": [L, F, L, F],
            "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 16,
            "linear_num_key_heads": 1, "linear_num_value_heads": 3,
            "linear_key_head_dim": 32, "linear_value_head_dim": 8, "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "partial_rotary_factor": 0.5},
        },
        "wrapper", "f32", False,
    ),
    "eight-layers-f16": (
        {
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 8,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "linear_num_key_heads": 2, "linear_num_value_heads": 2,
            "linear_key_head_dim": 16, "linear_value_head_dim": 16, "tie_word_embeddings": False,
        },
        "text", "f16", False,
    ),
}  # fmt: skip


def variant_config(name: str) -> dict:
    """The hub-style wrapper config of a variant."""
    from qwen_edge.export import presets

    overrides = {**_BASE, **VARIANTS[name][0]}
    if "layer_types" in overrides:
        overrides["num_hidden_layers"] = len(overrides["layer_types"])
    else:
        overrides.pop("layer_types", None)
    cfg = presets.hf_config("tiny", **overrides)
    if "layer_types" not in VARIANTS[name][0]:  # derive from the interval rule
        cfg["text_config"].pop("layer_types")
    # A vision tower only big enough to be present (it is skipped, but must be recognised).
    cfg["vision_config"].update(
        hidden_size=16, intermediate_size=32, num_heads=2, patch_size=4, num_position_embeddings=16
    )
    cfg["text_config"]["rope_parameters"] = {
        **presets.text_config("tiny")["rope_parameters"],
        **overrides.get("rope_parameters", {}),
    }
    return cfg


def transformers_logits(model, prompt: np.ndarray, steps: int):  # type: ignore[no-untyped-def]
    """Prompt logits from one forward, then `steps` greedy tokens decoded with the cache."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(prompt[None]), use_cache=True)
        prompt_logits = out.logits[0].float().numpy()
        cache = out.past_key_values
        token = int(prompt_logits[-1].argmax())
        tokens, decode_logits = [], []
        for _ in range(steps):
            tokens.append(token)
            out = model(input_ids=torch.tensor([[token]]), cache=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[0, -1].float().numpy()
            decode_logits.append(logits)
            token = int(logits.argmax())
    return prompt_logits, np.array(tokens, np.int64), np.stack(decode_logits)


def make_golden(name: str, out: Path, seed: int = 0) -> None:
    import torch

    _, layout, dtype, with_mtp = VARIANTS[name]
    hf_config = variant_config(name)
    if out.exists():
        shutil.rmtree(out)
    model = build_model(hf_config, layout, dtype, seed)
    model.save_pretrained(out)
    if with_mtp:
        add_mtp_shard(out, hf_config, seed, dtype)
    (out / "generation_config.json").unlink(missing_ok=True)
    # Reload from disk in fp32, exactly as a user would, and compute the goldens.
    cls = type(model)
    model = cls.from_pretrained(out, dtype=torch.float32).eval()
    prompt = np.random.default_rng(seed + 1).integers(0, VOCAB, PROMPT_LEN)
    prompt_logits, tokens, decode_logits = transformers_logits(model, prompt, DECODE_STEPS)
    np.savez(
        out / "golden.npz",
        prompt=prompt,
        prompt_logits=prompt_logits.astype(np.float32),
        decode_tokens=tokens,
        decode_logits=decode_logits.astype(np.float32),
    )
    import transformers

    (out / "golden.json").write_text(
        json.dumps(
            {"variant": name, "layout": layout, "dtype": dtype, "seed": seed,
             "torch": torch.__version__, "transformers": transformers.__version__},
            indent=2,
        )
        + "\n"
    )  # fmt: skip
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{name}: {size / 1e3:.0f} kB, logit range {np.ptp(prompt_logits):.1f}")


def main() -> int:
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for name in VARIANTS:
        make_golden(name, GOLDEN_DIR / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
