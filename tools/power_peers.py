#!/usr/bin/env python3
"""qwen-edge and llama.cpp under the same power sensor: joules per token side by side.

This process samples the sensor (the same `--power-sensor` specs as `qwen-edge bench`) and
measures the idle power once; each measurement runs in its own child process (engines
alternate within each repetition, as in tools/compare_peers.py), which loads its model and then
reports the CLOCK_MONOTONIC times of its prefill and decode phases. Monotonic time is one clock
for every process, so the parent cuts those phases out of its power trace. Phases go on until
they last `--min-phase-seconds` (a 10 Hz sensor misplaces up to a sample at each end).

    python tools/power_peers.py run --power-sensor rapl:/sys/class/powercap/intel-rapl:0 \\
        --threads 1,2,4 --qwen-edge q4=0.8b-q4.qe --llama q4=PEERS/Q4_0.gguf -o peers.jsonl
    qwen-edge report peers.jsonl -o report.html

Rows are `qwen-edge bench --sweep` rows (engine "qwen-edge" or "llama.cpp"), so the report
draws both engines in one plot. Needs llama-cpp-python for the llama.cpp side (the `peers`
tools: docs/benchmarks.md, "Peers and how they were built").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from compare_peers import parse_models  # tools/ is this script's first path entry

ENGINE_NAMES = {"qwen-edge": "qwen-edge", "llama": "llama.cpp"}


# --- workers (one child process each) -----------------------------------------------------------
def _ids(seed: int, vocab: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, min(vocab, 248000), n).tolist()


def _timed(fn: Any, tokens_per_call: int, min_calls: int, min_s: float) -> list[float]:
    """[start, end, tokens] (monotonic seconds) of calling fn at least `min_calls` times and
    for at least `min_s` seconds."""
    t0 = time.monotonic()
    calls = 0
    while calls < min_calls or (time.monotonic() - t0 < min_s and calls < 4000):
        fn()
        calls += 1
    return [t0, time.monotonic(), calls * tokens_per_call]


def worker_qwen_edge(a: argparse.Namespace) -> dict[str, Any]:
    from qwen_edge.backends.native import Model

    model = Model.load(a.model, threads=a.threads, context=a.context + a.prompt + 4096 + 8)
    vocab = model.config.vocab_size
    long, short = _ids(a.seed, vocab, a.prompt), _ids(a.seed + 1, vocab, a.context)
    state = model.new_state()
    logits = model.forward(short, state)
    box = {"logits": logits}

    def step() -> None:
        box["logits"] = model.forward([int(np.argmax(box["logits"]))], state)

    prefill = _timed(lambda: model.forward(long, model.new_state()), a.prompt, 1,
                     a.min_phase_seconds)  # fmt: skip
    return {"isa": model.isa, "prefill": prefill,
            "decode": _timed(step, 1, a.decode, a.min_phase_seconds)}  # fmt: skip


def worker_llama(a: argparse.Namespace) -> dict[str, Any]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=a.model, n_threads=a.threads, n_threads_batch=a.threads,
        n_ctx=a.context + a.prompt + 4096 + 8, n_batch=512, verbose=False,
    )  # fmt: skip
    vocab = llm.n_vocab()
    long, short = _ids(a.seed, vocab, a.prompt), _ids(a.seed + 1, vocab, a.context)

    def prefill() -> None:
        llm.reset()
        llm.eval(long)

    def last() -> int:
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(vocab,))))

    prefill()  # warm
    timed_prefill = _timed(prefill, a.prompt, 1, a.min_phase_seconds)
    llm.reset()
    llm.eval(short)
    decode = _timed(lambda: llm.eval([last()]), 1, a.decode, a.min_phase_seconds)
    return {"isa": "llama.cpp", "prefill": timed_prefill, "decode": decode}


WORKERS = {"qwen-edge": worker_qwen_edge, "llama": worker_llama}


def run_worker(engine: str, model: str, threads: int, a: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable, __file__, "worker", "--engine", engine, "--model", model,
        "--threads", str(threads), "--prompt", str(a.prompt), "--decode", str(a.decode),
        "--context", str(a.context), "--seed", str(a.seed),
        "--min-phase-seconds", str(a.min_phase_seconds),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=dict(os.environ))
    if out.returncode != 0:
        raise RuntimeError(f"{engine} {model} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the comparison -----------------------------------------------------------------------------
def cmd_run(a: argparse.Namespace) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from qwen_edge.errors import QwenEdgeError
    from qwen_edge.evaluation.bench import Power, phase_energy
    from qwen_edge.evaluation.sweep import base_row
    from qwen_edge.hardware.power import PowerMonitor, default_period, open_sensor

    try:
        sensor = open_sensor(a.power_sensor)
    except QwenEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    monitor = PowerMonitor(sensor, a.power_period or default_period(sensor.spec.kind)).start()
    power = Power(monitor, monitor.idle_baseline(a.idle_seconds))
    print(f"idle {power.idle_w:.2f} W ({sensor.spec})", file=sys.stderr)
    engines = {"qwen-edge": parse_models(a.qwen_edge), "llama": parse_models(a.llama)}
    groups = sorted({g for models in engines.values() for g in models})
    rows = 0
    with open(a.out, "a", encoding="utf-8") as out:
        for _ in range(a.repetitions):
            for n in (int(t) for t in a.threads.split(",")):
                for group in groups:
                    for engine, models in engines.items():
                        if group not in models:
                            continue
                        r = run_worker(engine, models[group], n, a)
                        monitor.sample()
                        row = base_row(ENGINE_NAMES[engine], models[group], group, power)
                        row.update(threads=n, context=a.context, isa=r["isa"])
                        for phase in ("prefill", "decode"):
                            t0, t1, tokens = r[phase]
                            row[phase] = phase_energy(power, t0, t1, tokens)
                            row[f"{phase}_tok_s"] = tokens / (t1 - t0)
                        print(
                            f"{group} {row['engine']} threads {n}: decode "
                            f"{row['decode_tok_s']:.1f} tok/s, "
                            f"{row['decode']['j_per_token']:.4f} J/token",
                            file=sys.stderr,
                        )
                        out.write(json.dumps(row) + "\n")
                        out.flush()
                        rows += 1
                        time.sleep(a.cooldown)  # back to idle between engines
    monitor.stop()
    print(f"wrote {rows} rows to {a.out}" + (f"; {monitor.error}" if monitor.error else ""))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure the engines under one sensor")
    r.add_argument("--power-sensor", required=True, metavar="KIND:WHERE")
    r.add_argument("--power-period", type=float)
    r.add_argument("--idle-seconds", type=float, default=3.0)
    r.add_argument("--qwen-edge", action="append", metavar="GROUP=PATH")
    r.add_argument("--llama", action="append", metavar="GROUP=PATH")
    r.add_argument("--threads", default="1,2")
    r.add_argument("--repetitions", type=int, default=1)
    r.add_argument("--cooldown", type=float, default=1.0, help="seconds between measurements")
    r.add_argument("-o", "--out", default="peers.jsonl")
    w = sub.add_parser("worker", help="(internal) one measurement")
    w.add_argument("--engine", choices=sorted(WORKERS), required=True)
    w.add_argument("--model", required=True)
    w.add_argument("--threads", type=int, default=1)
    for q in (r, w):
        q.add_argument("--prompt", type=int, default=512)
        q.add_argument("--decode", type=int, default=128)
        q.add_argument("--context", type=int, default=16, help="tokens before decoding")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--min-phase-seconds", type=float, default=3.0)
    a = p.parse_args()
    if a.cmd == "worker":
        print(json.dumps(WORKERS[a.engine](a)))
        return 0
    return cmd_run(a)


if __name__ == "__main__":
    sys.exit(main())
