#!/usr/bin/env python3
"""Prefill and decode speed of ONNX graphs and model files side by side, engines alternating.

Each engine is NAME=KIND:PATH, KIND one of
* `ort`: a graph on onnxruntime through qwen-edge's backend (`backends/onnx_runtime.py`);
* `genai`: a folder with genai_config.json on onnxruntime-genai's generator;
* `native`: a `.qe` model file on the native runtime.

Every repetition runs every engine once, in turn, on the same random prompt (so load and
machine noise hit all engines alike); the first repetition is a warm-up. Prefill is the time
to run the prompt; decode is `--decode` greedy steps after it. The JSON has the per-repetition
values, the means, the file sizes (and the weight bytes of a graph without its cos/sin tables)
and each engine's speed as a ratio to the first engine's: of the means, and the median of the
per-repetition ratios (paired: the run of the first engine just before; on a shared machine
this is the number to read). Decode is also timed in process CPU time (`decode_cpu_tok_s`),
which a preempted run does not inflate; it counts every thread's spinning, so compare it with
`--threads 1` or with spinning off.

    python tools/compare_onnx.py --threads 2 --json speed.json \\
        --engine 'q4s-onnx=genai:models/q4s' --engine 'genai-int4=genai:models/genai-int4' \\
        --engine 'q4s-onnx-ort=ort:models/q4s/model.onnx' --engine 'q4s-qe=native:models/q4s.qe'
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def graph_sizes(path: Path) -> dict[str, int]:
    """Bytes of the graph and its data file, and of its initializers without RoPE tables."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    weights = tables = 0
    for init in model.graph.initializer:
        size = 0
        for entry in init.external_data:
            if entry.key == "length":
                size = int(entry.value)
        if not init.external_data:
            size = len(init.SerializeToString())
        if "cos_cache" in init.name or "sin_cache" in init.name:
            tables += size
        else:
            weights += size
    data = sum(p.stat().st_size for p in path.parent.glob(path.name + ".data"))
    return {"file_bytes": path.stat().st_size + data, "weight_bytes": weights,
            "rope_table_bytes": tables}  # fmt: skip


class Ort:
    def __init__(self, path: Path, threads: int, context: int, config: Any) -> None:
        from qwen_edge.backends.onnx_runtime import OnnxModel

        self.model = OnnxModel.load(path, threads=threads, context=context, config=config)
        self.sizes = graph_sizes(path)

    def run(self, prompt: list[int], steps: int) -> tuple[float, float, float, list[int]]:
        state = self.model.new_state()
        t0 = time.perf_counter()
        logits = self.model.forward(prompt, state)
        t1, c1 = time.perf_counter(), time.process_time()
        out = []
        for _ in range(steps):
            out.append(int(np.argmax(logits)))
            logits = self.model.forward([out[-1]], state)
        return t1 - t0, time.perf_counter() - t1, time.process_time() - c1, out


class Native(Ort):
    def __init__(self, path: Path, threads: int, context: int, config: Any) -> None:
        from qwen_edge.backends.native import Model

        self.model = Model.load(path, threads=threads, context=context)
        self.sizes = {"file_bytes": path.stat().st_size, "weight_bytes": path.stat().st_size}


class Genai:
    def __init__(self, folder: Path, threads: int, context: int, config: Any) -> None:
        import onnxruntime_genai as og

        cfg_path = folder / "genai_config.json"
        cfg = json.loads(cfg_path.read_text())
        session = cfg["model"]["decoder"]["session_options"]
        if session.get("intra_op_num_threads") != threads:
            raise SystemExit(f"{cfg_path}: set session_options.intra_op_num_threads to {threads}")
        self.og = og
        self.model = og.Model(str(folder))
        self.context = context
        self.sizes = graph_sizes(folder / cfg["model"]["decoder"]["filename"])

    def run(self, prompt: list[int], steps: int) -> tuple[float, float, float, list[int]]:
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(prompt) + steps + 1, do_sample=False)
        gen = og.Generator(self.model, params)
        t0 = time.perf_counter()
        gen.append_tokens(prompt)  # runs the prompt
        t1, c1 = time.perf_counter(), time.process_time()
        out = []
        for _ in range(steps):  # samples the next token, then runs it
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
        return t1 - t0, time.perf_counter() - t1, time.process_time() - c1, out


KINDS = {"ort": Ort, "genai": Genai, "native": Native}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--engine", action="append", required=True, metavar="NAME=KIND:PATH")
    ap.add_argument("--checkpoint", help="checkpoint folder: config for graphs without metadata")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repetitions", type=int, default=3, help="measured, after one warm-up")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the record here")
    args = ap.parse_args()

    config = None
    if args.checkpoint:
        from qwen_edge.formats.checkpoint import Checkpoint

        config = Checkpoint(args.checkpoint).config
    engines: dict[str, Any] = {}
    record: dict[str, Any] = {
        "tool": "tools/compare_onnx.py",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "threads": args.threads, "prompt": args.prompt, "decode": args.decode,
        "repetitions": args.repetitions, "cpus": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(), "engines": {},
    }  # fmt: skip
    for spec in args.engine:
        name, _, rest = spec.partition("=")
        kind, _, path = rest.partition(":")
        t0 = time.perf_counter()
        engines[name] = KINDS[kind](Path(path), args.threads, args.prompt + args.decode + 8, config)
        record["engines"][name] = {
            "kind": kind, "path": path, "load_s": time.perf_counter() - t0,
            **engines[name].sizes, "prefill_tok_s": [], "decode_tok_s": [], "decode_cpu_tok_s": [],
        }  # fmt: skip
    vocab = config.vocab_size if config is not None else 248320
    prompt = [int(t) for t in np.random.default_rng(args.seed).integers(0, vocab, args.prompt)]
    for rep in range(args.repetitions + 1):
        for name, engine in engines.items():
            prefill_s, decode_s, decode_cpu_s, tokens = engine.run(prompt, args.decode)
            r = record["engines"][name]
            r["tokens"] = tokens
            if rep == 0:
                continue
            r["prefill_tok_s"].append(args.prompt / prefill_s)
            r["decode_tok_s"].append(args.decode / decode_s)
            r["decode_cpu_tok_s"].append(args.decode / decode_cpu_s)
            print(f"rep {rep} {name}: prefill {args.prompt / prefill_s:.1f} tok/s, "
                  f"decode {args.decode / decode_s:.1f} tok/s", flush=True)  # fmt: skip
    first = next(iter(record["engines"].values()))
    for r in record["engines"].values():
        for key in ("prefill_tok_s", "decode_tok_s", "decode_cpu_tok_s"):
            r[key + "_mean"] = float(np.mean(r[key]))
            r[key + "_std"] = float(np.std(r[key]))
            r[key + "_ratio_to_first"] = r[key + "_mean"] / first[key + "_mean"]
            # each repetition's ratio to the first engine's run just before it: the noise of a
            # shared machine moves both alike, and the median ignores the odd preempted run
            paired = np.array(r[key]) / np.array(first[key])
            r[key + "_paired_median_ratio"] = float(np.median(paired))
            r[key + "_paired_ratio_quartiles"] = [float(np.percentile(paired, q)) for q in (25, 75)]
        r["same_tokens_as_first"] = r["tokens"] == first["tokens"]
    for name, r in record["engines"].items():
        ratio = r["decode_tok_s_paired_median_ratio"]
        cpu = r["decode_cpu_tok_s_paired_median_ratio"]
        print(f"{name:24s} {r['file_bytes'] / 1e6:8.1f} MB  prefill {r['prefill_tok_s_mean']:7.1f}"
              f"  decode {r['decode_tok_s_mean']:6.1f} tok/s  (paired median x{ratio:.3f},"
              f" CPU time x{cpu:.3f})  same tokens: {r['same_tokens_as_first']}")  # fmt: skip
    if args.json:
        tmp = Path(args.json + ".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
