#!/usr/bin/env python3
"""Where a decode step of ONNX graphs spends its time, by operator, from onnxruntime's profiler.

Each graph (NAME=PATH) runs through qwen-edge's onnxruntime backend with profiling on: a random
prompt, then `--steps` greedy decode steps. For every node of the decode steps the median of its
kernel times is taken (a preempted run on a shared machine moves a few samples, not the
median), and the medians are summed by operator type. Prints, per graph, the median step time,
the operators it runs per step and their summed medians; `--json` keeps the table.

    python tools/profile_onnx.py --checkpoint models/trained --threads 1 \\
        ours=models/q4s/model.onnx genai=models/genai-int4/model.onnx
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def profile(path: Path, config: Any, threads: int, prompt: int, steps: int) -> dict[str, Any]:
    import onnxruntime as ort

    from qwen_edge.backends.onnx_runtime import METADATA_KEY, OnnxModel

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "profile")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    header = json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}
    model = OnnxModel(session, path, config, header, prompt + steps + 8, threads)
    state = model.new_state()
    rng = np.random.default_rng(0)
    logits = model.forward(rng.integers(0, config.vocab_size, prompt), state)
    for _ in range(steps):
        logits = model.forward([int(np.argmax(logits))], state)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    runs = [e for e in events if e.get("name") == "model_run"]
    start = runs[1]["ts"]  # the decode steps: every run after the prompt's
    times: dict[str, list[float]] = collections.defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["ts"] >= start and e["name"].endswith("_kernel_time"):
            times[e["name"]].append(e["dur"])
            op_of[e["name"]] = e["args"]["op_name"]
    by_op: dict[str, dict[str, float]] = {}
    for node, durations in times.items():
        row = by_op.setdefault(op_of[node], {"us": 0.0, "count": 0})
        row["us"] += float(np.median(durations))
        row["count"] += 1
    return {
        "step_us_median": float(np.median([r["dur"] for r in runs[1:]])),
        "nodes_per_step": sum(int(r["count"]) for r in by_op.values()),
        "node_us_sum_of_medians": sum(r["us"] for r in by_op.values()),
        "ops": dict(sorted(by_op.items(), key=lambda kv: -kv[1]["us"])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("graphs", nargs="+", metavar="NAME=PATH")
    ap.add_argument("--checkpoint", required=True, help="checkpoint folder (the configuration)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--json", help="write the record here")
    args = ap.parse_args()

    from qwen_edge.formats.checkpoint import Checkpoint

    config = Checkpoint(args.checkpoint).config
    record: dict[str, Any] = {"threads": args.threads, "steps": args.steps,
                              "load_average": os.getloadavg(), "graphs": {}}  # fmt: skip
    for spec in args.graphs:
        name, _, path = spec.partition("=")
        r = profile(Path(path), config, args.threads, args.prompt, args.steps)
        record["graphs"][name] = {"path": path, **r}
        print(f"== {name}: step {r['step_us_median']:.0f} us (median), "
              f"{r['nodes_per_step']} operators, "
              f"kernels {r['node_us_sum_of_medians']:.0f} us (sum of medians)")  # fmt: skip
        for op, row in r["ops"].items():
            print(f"  {op:36s} {row['us']:8.0f} us  x{row['count']}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
