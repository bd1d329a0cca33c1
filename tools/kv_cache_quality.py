#!/usr/bin/env python3
"""What a KV cache costs in accuracy: the native runtime with each cache against itself with
the f32 cache, on the same model file and text.

Windows of --ctx tokens (each from a fresh state) go through the model once per cache, the f32
cache's first; every position's next-token distribution is scored against the f32 cache's
(mean, p99 and max KL, top-1 agreement) and each run's perplexity is given. The weights are the
file's in every run, so only the cache differs:

    python tools/kv_cache_quality.py trained-f32.qe --text models/trained/heldout.tokens.json \\
        --ctx 1024 --json kv-quality.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from qwen_edge.backends.native import Model
from qwen_edge.cli.common import progress_bar
from qwen_edge.evaluation.quality import (
    Scores,
    VocabGroups,
    eval_tokens,
    log_softmax,
    model_file_weights,
    windows,
)

CACHES = ("f16", "q8", "q4")
PIECE = 256  # tokens per forward call: all_logits of a piece is [PIECE, vocab] floats


def window_logits(model: Model, groups: VocabGroups | None) -> Callable[[list[int]], np.ndarray]:
    """A window's logits from a fresh state, fed PIECE tokens at a time; with vocabulary
    groups only their representatives' (what `VocabGroups.collapse` takes as they are)."""

    def fn(ids: list[int]) -> np.ndarray:
        state = model.new_state()
        parts = []
        for i in range(0, len(ids), PIECE):
            logits = model.forward(ids[i : i + PIECE], state, all_logits=True)
            parts.append(logits if groups is None else logits[:, groups.first])
        return np.concatenate(parts)

    return fn


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model file (.qe)")
    p.add_argument("--text", help="token file (.json) or UTF-8 text (default: the shipped one)")
    p.add_argument("--tokenizer", help="tokenizer.json for a text file")
    p.add_argument("--tokens", type=int, help="use only the first N tokens")
    p.add_argument("--ctx", type=int, default=1024, help="window length (default 1024)")
    p.add_argument("--caches", default=",".join(CACHES), help="caches to score against f32")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", help="write the reports here")
    a = p.parse_args(argv)
    caches = [c for c in a.caches.split(",") if c]
    ids = eval_tokens(a.tokens, a.text, a.tokenizer)
    wins = windows(ids, a.ctx)
    # Ids with identical LM-head rows score as one class (a small trained model's unused ids).
    _, weights = model_file_weights(a.model)
    head = weights.get("lm_head.weight", weights["embed_tokens.weight"])
    groups = VocabGroups.of_rows(head)
    del weights, head

    def load(kv: str) -> Model:
        return Model.load(a.model, threads=a.threads, context=a.ctx, kv_cache=kv)

    exact = window_logits(load("f32"), groups)
    runs = {kv: window_logits(load(kv), groups) for kv in caches}
    scores = {kv: Scores(groups) for kv in caches}
    progress = progress_bar("windows", unit="window")
    t0 = time.perf_counter()
    for i, w in enumerate(wins):
        progress(f"window {i + 1}", i, len(wins))
        reference = exact(w)[:-1]
        if groups is not None:
            reference = groups.collapse(reference)
        reference = log_softmax(reference).astype(np.float32)
        targets = np.asarray(w[1:], dtype=np.int64)
        for kv, run in runs.items():
            logits = run(w)[:-1]
            scores[kv].add(
                reference, logits if groups is None else groups.collapse(logits), targets
            )
    reports = {kv: s.report() for kv, s in scores.items()}
    for kv, r in reports.items():
        print(
            f"{kv:>4} KV: mean KL {r.mean_kl:.3e}, p99 {r.p99_kl:.3e}, max {r.max_kl:.3e}, "
            f"top-1 {100 * r.top1:.2f} %, ppl {r.ppl_model:.3f} (f32 cache {r.ppl_ref:.3f}) "
            f"over {r.tokens} positions",
            file=sys.stderr,
            flush=True,
        )
    record = {
        "model": str(a.model),
        "text": a.text or "shipped",
        "ctx": a.ctx,
        "windows": len(wins),
        "seconds": round(time.perf_counter() - t0, 1),
        "reports": {kv: r.to_dict() for kv, r in reports.items()},
    }
    if a.json:
        Path(a.json).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["reports"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
