#!/usr/bin/env python3
"""Decode speed of two or more model files, alternating in one run: the A/B test behind a
recipe change that costs bytes (docs/quality.md).

Every model is loaded once; each round runs, for every model in turn (the order reversed on
odd rounds, so neither always goes first on a loaded machine), a fresh state, a
`--prompt`-token prompt, then `--decode` greedy steps. Prints the median tokens/s per model
and each model's ratio to the first; `--json` writes every round.

    python tools/ab_decode.py 0.8b-q4.qe 0.8b-q4-emb6.qe --rounds 9 --json ab.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from qwen_edge.backends.native import Model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--decode", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    if len(a.models) < 2:
        p.error("give at least two model files")

    context = a.prompt + a.decode + 1
    models = [Model.load(str(m), threads=a.threads, context=context) for m in a.models]
    vocab = models[0].config.vocab_size
    prompt = np.random.default_rng(0).integers(0, vocab, a.prompt)
    rates: dict[str, list[float]] = {str(m): [] for m in a.models}
    for r in range(a.rounds + 1):  # round 0 warms up
        order = list(zip(a.models, models, strict=True))
        for path, model in order if r % 2 == 0 else order[::-1]:
            state = model.new_state()
            logits = model.forward(prompt, state)
            start = time.perf_counter()
            for _ in range(a.decode):
                logits = model.forward([int(np.argmax(logits))], state)
            rate = a.decode / (time.perf_counter() - start)
            if r:
                rates[str(path)].append(rate)
    base = statistics.median(rates[str(a.models[0])])
    rows = []
    for path, model in zip(a.models, models, strict=True):
        med = statistics.median(rates[str(path)])
        rows.append({"model": str(path), "file_bytes": path.stat().st_size,
                     "decode_weight_bytes": model.decode_weight_bytes,
                     "decode_tok_s_median": med, "ratio_to_first": med / base,
                     "decode_tok_s": rates[str(path)]})  # fmt: skip
        print(f"{path.name}: {path.stat().st_size / 1e6:.1f} MB, "
              f"{model.decode_weight_bytes / 1e6:.1f} MB read per token, "
              f"{med:.2f} tok/s median of {a.rounds} ({med / base:.3f} x the first)")  # fmt: skip
    if a.json:
        doc = {"threads": a.threads, "prompt": a.prompt, "decode": a.decode,
               "rounds": a.rounds, "isa": models[0].isa, "results": rows}  # fmt: skip
        a.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
