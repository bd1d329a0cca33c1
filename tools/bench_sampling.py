#!/usr/bin/env python3
"""Time per step of `qwen_edge.generation.sampling.Sampler` on the 248,320-entry vocabulary.

The house rule: a sampler moves to C++ only if it takes more than ~5 % of decode time; the native
runtime aims at 20-40 ms per token on 0.8B, so the budget is ~1-2 ms per step. Logits are
model-like (a few likely tokens over a flat tail) and, for the worst case of top-p without
top-k, flat. Prints the median wall and CPU time per setting (CPU time is what other load on
the machine does not inflate), the 90th percentile, and the share of a 30 ms step.

    python tools/bench_sampling.py [--steps 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from qwen_edge.generation.sampling import Sampler
from qwen_edge.generation.settings import SamplingParams

VOCAB, VALID = 248_320, 248_077
SETTINGS = {
    "greedy": SamplingParams(temperature=0.0),
    "qwen3.5 defaults (T 0.7, top-k 20, top-p 0.8, presence 1.5)": SamplingParams(
        temperature=0.7, top_k=20, top_p=0.8, presence_penalty=1.5
    ),
    "thinking (T 1.0, top-k 20, top-p 0.95, presence 1.5)": SamplingParams(
        temperature=1.0, top_k=20, top_p=0.95, presence_penalty=1.5
    ),
    "top-k 40 + repetition 1.1": SamplingParams(temperature=0.8, top_k=40, repetition_penalty=1.1),
    "min-p 0.05 alone": SamplingParams(temperature=1.0, min_p=0.05),
    "temperature 1.0 alone (whole vocabulary)": SamplingParams(temperature=1.0),
    "top-p 0.95 alone": SamplingParams(temperature=1.0, top_p=0.95),
}


def model_like(rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal(VOCAB).astype(np.float32) * 2.0
    x[rng.choice(VOCAB, 30, replace=False)] += rng.uniform(4, 12, 30).astype(np.float32)
    return x


def bench(
    params: SamplingParams, logits: list[np.ndarray], logprobs: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Wall and CPU milliseconds per step (CPU time is what a busy machine cannot inflate)."""
    sampler = Sampler(params, VOCAB, valid_vocab=VALID, prompt=range(1000, 1500), logprobs=logprobs)
    for x in logits[:10]:  # warm-up
        sampler(x)
    wall, cpu = [], []
    for x in logits:
        t0, c0 = time.perf_counter(), time.thread_time()
        sampler(x)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return np.array(wall) * 1e3, np.array(cpu) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    peaky = [model_like(rng) for _ in range(16)]
    flat = [(rng.standard_normal(VOCAB) * 0.5).astype(np.float32) for _ in range(16)]
    rows = []
    for name, params in SETTINGS.items():
        for dist, pool in (("model-like", peaky), ("flat", flat)):
            if dist == "flat" and name != "top-p 0.95 alone":
                continue
            for logprobs in (False, True):
                if logprobs and name not in ("greedy", list(SETTINGS)[1]):
                    continue
                logits = [pool[i % len(pool)] for i in range(args.steps)]
                wall, cpu = bench(params, logits, logprobs)
                rows.append({
                    "setting": name + (" + logprobs" if logprobs else ""),
                    "logits": dist,
                    "median_ms": float(np.median(wall)),
                    "p90_ms": float(np.percentile(wall, 90)),
                    "median_cpu_ms": float(np.median(cpu)),
                })  # fmt: skip
    if args.json:
        print(json.dumps({"vocab": VOCAB, "steps": args.steps, "results": rows}, indent=2))
        return 0
    print(f"sampling time per step, vocabulary {VOCAB:,}, {args.steps} steps")
    for r in rows:
        share = 100 * r["median_cpu_ms"] / 30.0
        print(
            f"  {r['setting']:<62} {r['logits']:<10} median {r['median_ms']:6.3f} ms wall, "
            f"{r['median_cpu_ms']:6.3f} ms CPU ({share:4.1f} % of a 30 ms step); "
            f"p90 {r['p90_ms']:6.3f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
