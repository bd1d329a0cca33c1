#!/usr/bin/env python3
"""Activation statistics of every matrix input of a checkpoint, on an evaluation text.

Runs the fp32 reference model over the text (windows of `--ctx` tokens, each from a fresh
state) with every matrix recording its inputs (`qwen_edge.evaluation.activations`), then prints
per matrix kind the outlier ratio (largest per-channel max|x| over the median channel's), the
per-token peak over RMS, and the relative error of rounding the inputs to q8a (what the native
integer kernels do), to int8 with one scale per token, and to int4 per block of 32. `--json`
writes the per-matrix and per-kind numbers.

`--calibration FILE` also writes the per-channel mean squared input of every matrix as an .npz
(`qwen_edge.evaluation.activations.importance`), the calibration file of activation-aware
quantization (`qwen-edge export --calibration FILE`). Calibrate on text the evaluation does
not score: for the trained checkpoint, its training split (`tools/train_small.py
--write-train FILE`).

    python tools/activation_stats.py models/trained --text models/trained/heldout.tokens.json \\
        --tokens 2048 --json activations.json
    python tools/activation_stats.py models/trained --text train.tokens.json --tokens 8192 \\
        --calibration models/trained-calibration.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from qwen_edge.backends.reference import ReferenceModel
from qwen_edge.evaluation import activations, quality
from qwen_edge.formats.checkpoint import Checkpoint


def _range(d: dict[str, float] | None, fmt: str) -> str:
    if d is None:
        return "-"
    return f"{d['min']:{fmt}}–{d['max']:{fmt}} ({d['median']:{fmt}})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--text", type=Path, help="token file (.json) or UTF-8 text (default: shipped)")
    p.add_argument("--tokens", type=int, default=2048, help="first N tokens (default 2048)")
    p.add_argument("--ctx", type=int, default=quality.DEFAULT_CTX)
    p.add_argument("--json", type=Path, help="write the statistics here")
    p.add_argument(
        "--calibration", type=Path, metavar="FILE",
        help="write the per-channel mean squared inputs here (.npz, for export --calibration)",
    )  # fmt: skip
    a = p.parse_args(argv)

    ckpt = Checkpoint(a.checkpoint)
    ids = quality.eval_tokens(a.tokens, a.text, a.checkpoint / "tokenizer.json")
    wins = quality.windows(ids, a.ctx)
    model = ReferenceModel.from_checkpoint(ckpt, context=a.ctx)
    stats = activations.record_inputs(model)
    groups = quality.VocabGroups.of_rows(model.w["embed_tokens.weight"])
    if groups is not None and model.config.tie_word_embeddings:
        # Only the LM head's input is recorded: its repeated rows need not be multiplied.
        model.lm_head.w_t = model.lm_head.w_t[:, groups.first]
    start = time.perf_counter()
    for w in wins:
        model.forward(w, model.new_state(), all_logits=True)
    per_matrix = [s.summary() for s in stats.values()]
    kinds = activations.by_kind(per_matrix)

    seconds = time.perf_counter() - start
    print(f"{a.checkpoint}: {sum(len(w) for w in wins)} tokens in {len(wins)} windows of "
          f"{a.ctx} ({seconds:.0f} s); ranges over the layers: min–max (median)\n")  # fmt: skip
    print("| matrix input | layers | channels | channel max / median | token peak / RMS | "
          "q8a error | int8 per-token error | int4 (blocks of 32) error |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for k in kinds:
        print(f"| {k['kind']} | {k['layers']} | {k['channels']} | "
              f"{_range(k['channel_max_over_median'], '.1f')} | "
              f"{_range(k['token_peak_over_rms_mean'], '.1f')} | "
              f"{_range(k['q8a_rel_error'], '.4f')} | {_range(k['int8_token_rel_error'], '.4f')} | "
              f"{_range(k['int4_rel_error'], '.3f')} |")  # fmt: skip
    if a.calibration:
        imp = activations.importance(stats, model.config.tie_word_embeddings)
        meta = {"checkpoint": a.checkpoint.resolve().name, "text": str(a.text or "shipped"),
                "tokens": sum(len(w) for w in wins), "ctx": a.ctx,
                "measure": "mean squared input per channel"}  # fmt: skip
        with open(a.calibration, "wb") as f:  # np.savez would append .npz to other names
            np.savez(f, __meta__=np.array(json.dumps(meta)), **imp)
        print(f"\ncalibration: {len(imp)} tensors -> {a.calibration}")
    if a.json:
        doc = {"checkpoint": str(a.checkpoint), "text": str(a.text or "shipped"),
               "tokens": sum(len(w) for w in wins), "ctx": a.ctx, "kinds": kinds,
               "matrices": per_matrix}  # fmt: skip
        a.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
