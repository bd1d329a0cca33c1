"""`qwen-edge bench`: load time, prefill and decode speed, TTFT, peak RSS -> one JSON record.

Measures one model file with the native runtime, the way llama.cpp's `llama-bench` does: a
warm-up, then repetitions of each test, with random token ids so tokenization is not measured
(mlx-lm `benchmark.py`). Per repetition:

* load: wall time of `Model.load` (map + validate; the file is in the page cache after the
  first repetition, as on a device that keeps its model resident);
* prefill: a fresh state, one forward over `prompt` tokens; `ttft_s` is that wall time, i.e.
  the time from submitting the prompt to the first token's logits;
* decode: a fresh state, a `decode_prompt`-token prompt, then `decode` greedy single-token
  forwards; tokens/s over the decode steps only;
* decode bandwidth: the weight bytes one step reads times decode tokens/s, next to this
  machine's read bandwidth measured in the same run (numpy streaming sum, 1 and n threads).

Peak RSS is the process's high-water mark (`ru_maxrss`; the bandwidth test runs in a child
process so it does not count), so run one model per process for a clean figure
(tools/compare_peers.py does). Timings are wall clock; nothing here is a test.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = "qwen-edge-bench/1"


@dataclass(frozen=True)
class BenchConfig:
    """What to measure."""

    threads: tuple[int, ...] = (1, 2)
    prompt: int = 512
    decode: int = 128
    decode_prompt: int = 16
    repetitions: int = 3
    warmup: int = 1
    isa: str | None = None
    seed: int = 0
    measure_bandwidth: bool = True


@dataclass
class RunResult:
    """Per-repetition values of one thread count."""

    threads: int
    isa: str = ""
    load_s: list[float] = field(default_factory=list)
    prefill_tok_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    decode_tok_s: list[float] = field(default_factory=list)
    decode_bandwidth_gbs: list[float] = field(default_factory=list)
    decode_bytes_per_token: int = 0
    state_bytes: int = 0


def mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return (float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0) if a.size else (0.0, 0.0)


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def read_bandwidth_gbs(threads: int, size_bytes: int = 1 << 30, repetitions: int = 3) -> float:
    """Streaming read bandwidth of this machine in GB/s: `threads` threads of the native pool
    each sum their part of a buffer far larger than the caches (1 GiB by default; this
    machine's L3 is large). Falls back to numpy sums when the native core is missing."""
    try:
        from ..backends.native import core

        return float(core().read_bandwidth(size_bytes, threads, repetitions))
    except Exception:  # no native core: the numpy estimate below
        pass
    data = np.ones(size_bytes // 4, np.float32)
    parts = np.array_split(data, threads)
    best = float("inf")
    for _ in range(repetitions):
        workers = [threading.Thread(target=np.add.reduce, args=(p,)) for p in parts]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9


def read_bandwidth_subprocess(threads: int) -> float:
    """`read_bandwidth_gbs` in a child process, so its buffer does not count in our peak RSS."""
    code = (
        "from qwen_edge.evaluation.bench import read_bandwidth_gbs; "
        f"print(read_bandwidth_gbs({threads}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    return float(out.stdout.strip())


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def file_digest(path: Path) -> str:
    """sha256 of the model file (identifies the exact weights in the JSON record)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _greedy_decode(model: Any, state: Any, logits: np.ndarray, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        logits = model.forward([int(np.argmax(logits))], state)
    return time.perf_counter() - start


def bench_threads(path: Path, threads: int, cfg: BenchConfig) -> RunResult:
    """All repetitions for one thread count (after `cfg.warmup` unrecorded ones)."""
    from ..backends.native import Model

    rng = np.random.default_rng(cfg.seed)
    result = RunResult(threads=threads)
    context = max(cfg.prompt, cfg.decode_prompt + cfg.decode) + 1
    for rep in range(cfg.warmup + cfg.repetitions):
        start = time.perf_counter()
        model = Model.load(path, threads=threads, context=context, isa=cfg.isa)
        load_s = time.perf_counter() - start
        vocab = model.config.vocab_size
        prompt = rng.integers(0, vocab, cfg.prompt)
        state = model.new_state()
        start = time.perf_counter()
        model.forward(prompt, state)
        ttft = time.perf_counter() - start

        state = model.new_state()
        logits = model.forward(rng.integers(0, vocab, cfg.decode_prompt), state)
        decode_s = _greedy_decode(model, state, logits, cfg.decode)
        if rep < cfg.warmup:
            continue
        decode_tok_s = cfg.decode / decode_s
        result.isa = model.isa
        result.load_s.append(load_s)
        result.ttft_s.append(ttft)
        result.prefill_tok_s.append(cfg.prompt / ttft)
        result.decode_tok_s.append(decode_tok_s)
        result.decode_bytes_per_token = model.decode_weight_bytes
        result.decode_bandwidth_gbs.append(model.decode_weight_bytes * decode_tok_s / 1e9)
        result.state_bytes = state.cache_bytes
        del model, state
    return result


def run(path: str | Path, cfg: BenchConfig) -> dict[str, Any]:
    """Benchmarks a model file; returns the JSON record (see `SCHEMA`)."""
    from ..backends.native import check_model_file, cpu_report

    path = Path(path)
    info = check_model_file(str(path))
    header = json.loads(bytes(info["header"]).decode("utf-8"))
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "engine": "qwen-edge",
        "git_commit": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {
            "machine": platform.machine(),
            "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            **cpu_report(),
        },
        "board": None,
        "model": {
            "path": str(path),
            "file_bytes": path.stat().st_size,
            "sha256": file_digest(path),
            "recipe": header.get("quant", {}).get("recipe"),
            "bits_per_weight": header.get("quant", {}).get("bits_per_weight"),
        },
        "config": asdict(cfg),
        "runs": [],
        "memory_bandwidth_gbs": {},
    }
    if cfg.measure_bandwidth:
        for n in sorted(set(cfg.threads)):
            record["memory_bandwidth_gbs"][str(n)] = read_bandwidth_subprocess(n)
    record["rss_before_load_bytes"] = current_rss_bytes()
    for n in cfg.threads:
        r = bench_threads(path, n, cfg)
        run_record = asdict(r)
        for key in ("load_s", "prefill_tok_s", "ttft_s", "decode_tok_s", "decode_bandwidth_gbs"):
            m, s = mean_std(getattr(r, key))
            run_record[key + "_mean"] = m
            run_record[key + "_std"] = s
        bw = record["memory_bandwidth_gbs"].get(str(n))
        run_record["decode_bandwidth_fraction"] = (
            run_record["decode_bandwidth_gbs_mean"] / bw if bw else None
        )
        record["runs"].append(run_record)
    record["peak_rss_bytes"] = peak_rss_bytes()
    return record


def format_table(record: dict[str, Any]) -> str:
    """Human-readable summary of a record."""
    m = record["model"]
    lines = [
        f"model {m['path']} ({m['file_bytes'] / 1e6:.1f} MB, recipe {m['recipe']})",
        f"{'threads':>7} {'isa':>12} {'load s':>8} {'prefill tok/s':>14} {'ttft s':>8} "
        f"{'decode tok/s':>13} {'decode GB/s':>12} {'of peak':>8}",
    ]
    for r in record["runs"]:
        frac = r["decode_bandwidth_fraction"]
        lines.append(
            f"{r['threads']:>7} {r['isa']:>12} {r['load_s_mean']:>8.3f} "
            f"{r['prefill_tok_s_mean']:>8.1f} ±{r['prefill_tok_s_std']:<5.1f}"
            f"{r['ttft_s_mean']:>8.3f} "
            f"{r['decode_tok_s_mean']:>7.1f} ±{r['decode_tok_s_std']:<4.1f}"
            f"{r['decode_bandwidth_gbs_mean']:>12.1f} {'' if frac is None else f'{frac:>7.0%}'}"
        )
    bw = ", ".join(f"{k} thr {v:.1f} GB/s" for k, v in record["memory_bandwidth_gbs"].items())
    lines.append(
        f"read bandwidth: {bw or 'not measured'}; peak RSS {record['peak_rss_bytes'] / 1e6:.0f} MB"
    )
    return "\n".join(lines)


def write_json(record: dict[str, Any], path: str | Path) -> None:
    """Writes the record atomically (temporary file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
