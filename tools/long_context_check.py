#!/usr/bin/env python3
"""Long-prompt check by hand: tens of thousands of tokens prefilled in chunks on a small random
configuration, against the numpy reference, with the peak memory the prefill adds.

For each KV cache type the prompt goes through the native model in `--chunk`-token forward
calls (the model splits them into its batch); the last logits of every chunk are compared with
the numpy reference's (float32 weights, full softmax; fed in chunks too), and a second native
run in 4,096-token calls (the largest batch) must give the same logits bit for bit. The peak
RSS the prefill adds over the loaded model (VmHWM after clearing it, Linux) is set beside
`Model.state_bytes`, what the state preallocates:

    python tools/long_context_check.py --tokens 32768 --json long-context.json

CI runs the same comparisons at 3,000 tokens (tests/backends/native/test_long_context.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from qwen_edge.backends.native import Model
from qwen_edge.backends.reference import ReferenceModel
from qwen_edge.export import presets
from qwen_edge.export.random_checkpoint import random_tensor
from qwen_edge.formats.config import ModelConfig


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def _native_run(
    model: Model, ids: np.ndarray, chunk: int, context: int
) -> tuple[np.ndarray, dict[str, float]]:
    before = _status("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    state = model.new_state(context)
    last = []
    for s in range(0, len(ids), chunk):
        last.append(model.forward(ids[s : s + chunk], state).copy())
    wall = time.perf_counter() - start
    stats = {
        "seconds": wall,
        "tokens_per_s": len(ids) / wall,
        "state_bytes": model.state_bytes(context),
        "peak_rss_growth_bytes": _status("VmHWM") - before,
    }
    del state
    return np.stack(last), stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--kv", default="f32,f16,q8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-reference", action="store_true", help="skip the numpy reference")
    p.add_argument("--json")
    a = p.parse_args(argv)
    config = ModelConfig.from_hf(
        presets.hf_config("tiny", vocab_size=1000, eos_token_id=999)
    )  # tests' small_config
    weights = {n: random_tensor(n, s, 0) for n, s in config.text_tensor_shapes().items()}
    rng = np.random.default_rng(0)
    tensors = {n: ("f32", w.shape, w) for n, w in weights.items()}
    ids = rng.integers(0, config.vocab_size, a.tokens)
    context = a.tokens
    # Chunk ends: the positions whose logits are compared.
    ends = [min(s + a.chunk, a.tokens) - 1 for s in range(0, a.tokens, a.chunk)]
    want = None
    record: dict = {"tokens": a.tokens, "chunk": a.chunk, "threads": a.threads, "runs": []}
    if not a.no_reference:
        start = time.perf_counter()
        ref = ReferenceModel(config, weights, context=context)
        state = ref.new_state()
        want = np.stack(
            [ref.forward(ids[s : s + a.chunk], state) for s in range(0, a.tokens, a.chunk)]
        )
        record["reference_seconds"] = time.perf_counter() - start
        print(f"reference: {record['reference_seconds']:.0f} s", file=sys.stderr)
    for kv in a.kv.split(","):
        model = Model.from_tensors(
            config, tensors, kv_cache=kv, threads=a.threads, batch=128, context=context
        )
        got, stats = _native_run(model, ids, a.chunk, context)
        big = Model.from_tensors(
            config, tensors, kv_cache=kv, threads=a.threads, batch=4096, context=context
        )
        got_big, _ = _native_run(big, ids, 4096, context)
        run = {"kv_cache": kv, **stats}
        # 4,096-token calls end elsewhere; compare where both have a chunk end.
        common = [i for i, e in enumerate(ends) if (e + 1) % 4096 == 0 or e == a.tokens - 1]
        big_ends = [min(s + 4096, a.tokens) - 1 for s in range(0, a.tokens, 4096)]
        big_at = [big_ends.index(ends[i]) for i in common]
        run["bitwise_equal_to_4096_token_calls"] = bool(
            np.array_equal(got[common], got_big[big_at])
        )
        if want is not None:
            run["max_abs_diff_over_logit_range"] = float(np.abs(got - want).max() / np.ptp(want))
            run["same_argmax"] = float(np.mean(got.argmax(1) == want.argmax(1)))
        record["runs"].append(run)
        print(json.dumps(run), file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
