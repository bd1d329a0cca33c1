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

With a power sensor (`Power`: a sampling monitor and the idle power measured before the run),
each phase of each repetition also gets its energy: the sensor's trace is marked at the phase's
ends, and its joules are split per token, in total and above idle (`phase_energy`). With a
budget or a target rate, a governed decode then runs for `budget_seconds` under the governor
(`governed_decode`): how well the budget held over 1-s windows, and the throughput it kept
against the unconstrained decode. The fields are documented in docs/energy.md.
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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QwenEdgeError
from ..formats.atomic_files import write_atomically
from ..generation.loop import Progress, counting, prefill
from ..generation.pacing import PacedModel
from ..generation.speculative import SpeculativeStats, speculative_step, supports_speculation
from ..hardware import thermal
from ..hardware.governor import CpuFreq, Governor
from ..hardware.power import Clock, PowerMonitor, RealClock

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
    kv_cache: str = "f16"  # the native runtime's KV cache type; q8 for long contexts
    seed: int = 0
    measure_bandwidth: bool = True
    budget_w: float | None = None  # a governed decode under this budget ...
    tokens_per_s: float | None = None  # ... or at this rate
    budget_seconds: float = 30.0  # how long the governed decode runs
    min_phase_seconds: float = 3.0  # with power: phases repeat until they last this long
    # "mtp" or "auto" (the decode is greedy): decode with MTP drafts (docs/speculative.md); by
    # default the bench measures plain decoding, the figure every peer is compared on
    speculative: str | None = None
    draft_tokens: int = 2


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
    power: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # phase -> per rep
    speculative: list[dict[str, Any]] = field(default_factory=list)  # per rep, when it ran


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


@dataclass
class Power:
    """What the benchmarks measure power with: a started monitor and the idle power."""

    monitor: PowerMonitor
    idle_w: float
    cpufreq: CpuFreq | None = None  # clock caps the governor may turn (None: not writable)

    @property
    def clock(self) -> Clock:
        return self.monitor.clock


def phase_energy(power: Power, t0: float, t1: float, tokens: int) -> dict[str, float]:
    """Watts, joules per token and tokens per joule of [t0, t1], in total and above idle."""
    seconds = t1 - t0
    joules = power.monitor.trace.energy(t0, t1)
    above = joules - power.idle_w * seconds
    return {
        "start": t0,
        "seconds": seconds,
        "tokens": tokens,
        "watts": joules / seconds if seconds > 0 else 0.0,
        "joules": joules,
        "j_per_token": joules / tokens,
        "tokens_per_j": tokens / joules if joules > 0 else 0.0,
        "j_per_token_above_idle": above / tokens,
        "tokens_per_j_above_idle": tokens / above if above > 0 else 0.0,
    }


Loader = Callable[..., Any]  # (path, threads=, context=, isa=, kv_cache=) -> a model with .forward


def _argmax(logits: np.ndarray) -> tuple[int, None]:
    return int(np.argmax(logits)), None


def _greedy_steps(
    model: Any, prompt: np.ndarray, state: Any, progress: Progress | None = None
) -> Iterator[None]:
    """Prefills (in chunks, as generation does: a deep prompt takes minutes on a board, and
    `progress` hears of each), then one greedy single-token forward per next()."""
    logits = prefill(model, [int(t) for t in prompt], state, progress=progress)
    while True:
        yield
        logits = model.forward([int(np.argmax(logits))], state)


def _native_loader(
    path: Path, threads: int, context: int, isa: str | None, kv_cache: str = "f16"
) -> Any:
    from ..backends.native import Model

    return Model.load(path, threads=threads, context=context, isa=isa, kv_cache=kv_cache)


def _onnx_loader(
    path: Path, threads: int, context: int, isa: str | None, kv_cache: str = "f16"
) -> Any:
    from ..backends.onnx_runtime import OnnxModel

    if kv_cache != "f16":
        raise QwenEdgeError(
            f"a {kv_cache} KV cache is the native runtime's; an ONNX graph has its own"
        )
    return OnnxModel.load(path, threads=threads, context=context)


def kv_bytes_per_position(model: Any) -> float:
    """The KV cache bytes one position adds to a state (0 where the model cannot say): a
    decode step at depth d reads d times this beside the weights."""
    try:
        return (model.state_bytes(2048) - model.state_bytes(1024)) / 1024
    except (AttributeError, ValueError):  # no such method, or a model of a shorter context
        return 0.0


def loader_for(path: str | Path) -> Loader:
    """The loader of a model path: onnxruntime for `.onnx` graphs, else the native runtime."""
    return _onnx_loader if Path(path).suffix == ".onnx" else _native_loader


def bench_threads(
    path: Path,
    threads: int,
    cfg: BenchConfig,
    power: Power | None = None,
    load: Loader = _native_loader,
    progress: Callable[[int, int], None] | None = None,
) -> RunResult:
    """All repetitions for one thread count (after `cfg.warmup` unrecorded ones); with
    `power`, the energy of each phase too; `progress(done, total)` after each chunk of the
    decode phase's prompt (`cfg.decode_prompt` tokens)."""
    clock: Clock = power.clock if power is not None else RealClock()
    rng = np.random.default_rng(cfg.seed)
    result = RunResult(threads=threads)
    slack = cfg.draft_tokens + 1 if cfg.speculative else 0  # a round may run past the last step
    context = max(cfg.prompt, cfg.decode_prompt + cfg.decode + slack) + 1
    if power is not None:
        context = max(context, cfg.decode_prompt + 4096)  # room to decode min_phase_seconds
    for rep in range(cfg.warmup + cfg.repetitions):
        start = clock.now()
        model = load(path, threads=threads, context=context, isa=cfg.isa, kv_cache=cfg.kv_cache)
        load_s = clock.now() - start
        vocab = model.config.vocab_size
        prompt = rng.integers(0, vocab, cfg.prompt)
        # With power, a phase repeats (prefill) or goes on (decode) until it lasts at least
        # `min_phase_seconds`: a 10 Hz sensor misplaces up to a sample at each end.
        min_s = cfg.min_phase_seconds if power is not None else 0.0
        mark = power.monitor.mark if power is not None else clock.now
        start = mark()
        model.forward(prompt, model.new_state())
        ttft = clock.now() - start
        prefilled = cfg.prompt
        while clock.now() - start < min_s:
            model.forward(prompt, model.new_state())
            prefilled += cfg.prompt
        phases = {"prefill": (start, mark(), prefilled)}

        state = model.new_state()
        decode_prompt = rng.integers(0, vocab, cfg.decode_prompt)
        tick = None
        if progress is not None:
            progress(0, cfg.decode_prompt)  # a prefill starts (after loading, the short prompt)
            tick = counting(progress, cfg.decode_prompt)
        spec = None
        if cfg.speculative in ("mtp", "auto") and supports_speculation(model):
            spec = SpeculativeStats()
            tokens = speculative_step(
                model, [int(t) for t in decode_prompt], _argmax, state=state,
                context=context - slack, draft_tokens=cfg.draft_tokens, stats=spec,
                progress=tick,
            )  # fmt: skip
        else:
            tokens = _greedy_steps(model, decode_prompt, state, tick)
        next(tokens)  # the prefill (and, speculating, the first token)
        start = mark()
        steps = 0
        while steps < cfg.decode or (
            clock.now() - start < min_s and state.position < context - slack
        ):
            next(tokens)
            steps += 1
        end = mark()
        decode_s = (end - start) * cfg.decode / steps
        phases["decode"] = (start, end, steps)
        if rep < cfg.warmup:
            continue
        decode_tok_s = cfg.decode / decode_s
        # a step reads the weights and the cache of every position before it: on average
        # decode_prompt + steps / 2 of them (what makes decode at depth slower)
        kv_read = kv_bytes_per_position(model) * (cfg.decode_prompt + steps / 2)
        bytes_per_token = int(model.decode_weight_bytes + kv_read)
        result.isa = model.isa
        result.load_s.append(load_s)
        result.ttft_s.append(ttft)
        result.prefill_tok_s.append(cfg.prompt / ttft)
        result.decode_tok_s.append(decode_tok_s)
        result.decode_bytes_per_token = bytes_per_token
        result.decode_bandwidth_gbs.append(bytes_per_token * decode_tok_s / 1e9)
        result.state_bytes = state.cache_bytes
        if spec is not None:
            result.speculative.append(spec.to_dict())
        if power is not None:
            for name, (t0, t1, n) in phases.items():
                result.power.setdefault(name, []).append(phase_energy(power, t0, t1, n))
        tokens.close()
        del model, state, tokens
    return result


def governed_decode(
    path: Path, cfg: BenchConfig, power: Power, threads: int, load: Loader = _native_loader
) -> dict[str, Any]:
    """Greedy decoding for `cfg.budget_seconds` under a governor holding `cfg.budget_w` and/or
    `cfg.tokens_per_s`, on a model of `threads` threads (the most the governor may use), after
    a `cfg.decode_prompt`-token prompt (prefilled before the governed run; when the context
    fills, decoding starts again from it).

    Returns:
        `finish_governed`'s report.
    """
    clock = power.clock
    context = cfg.decode_prompt + max(cfg.decode, 1024)
    model = load(path, threads=threads, context=context, isa=cfg.isa, kv_cache=cfg.kv_cache)
    rng = np.random.default_rng(cfg.seed)
    prompt_state = model.new_state()
    prompt_logits = model.forward(rng.integers(0, model.config.vocab_size, cfg.decode_prompt),
                                  prompt_state)  # fmt: skip
    governor = make_governor(power, model, cfg.budget_w, cfg.tokens_per_s)
    paced = PacedModel(model, governor)
    try:
        while clock.now() - governor.started < cfg.budget_seconds:
            state, logits = prompt_state.copy(), prompt_logits
            while state.position < context and clock.now() - governor.started < cfg.budget_seconds:
                logits = paced.forward([int(np.argmax(logits))], state)
    finally:
        report = finish_governed(governor, power)
    return report


def make_governor(
    power: Power, model: Any, budget_w: float | None, tokens_per_s: float | None
) -> Governor:
    """A governor for `model` (its `set_threads` and `max_threads` where it has them)."""
    return Governor(
        power.monitor,
        idle_w=power.idle_w,
        budget_w=budget_w,
        tokens_per_s=tokens_per_s,
        max_threads=getattr(model, "max_threads", getattr(model, "threads", 1)),
        set_threads=getattr(model, "set_threads", None),
        cpufreq=power.cpufreq,
    )


def finish_governed(governor: Governor, power: Power) -> dict[str, Any]:
    """Ends a governed run: the governor's report with the decode rate, the energy per token
    and the power trace of the run (seconds from its start, watts)."""
    report = governor.finish()
    start, end = governor.started, power.monitor.mark()
    tokens = governor.decode_tokens
    report["tokens_per_s"] = tokens / (end - start) if end > start else 0.0
    report["energy"] = phase_energy(power, start, end, max(tokens, 1))
    report["trace"] = power.monitor.trace.since(start).downsample(t0=start)
    return report


def run(
    path: str | Path,
    cfg: BenchConfig,
    power: Power | None = None,
    load: Loader | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Benchmarks a model file (`.qe` natively, `.onnx` on onnxruntime unless `load` says
    otherwise); returns the JSON record (see `SCHEMA`, docs/energy.md). `progress` hears of
    the decode phase's prompt as `bench_threads` says."""
    path = Path(path)
    load = load or loader_for(path)
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "engine": "qwen-edge",
        "git_commit": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {
            "machine": platform.machine(),
            "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        },
        "board": None,
        "model": {"path": str(path)},
        "config": asdict(cfg),
        "runs": [],
        "memory_bandwidth_gbs": {},
    }
    if load is _native_loader:
        from ..backends.native import check_model_file, cpu_report

        info = check_model_file(str(path))
        header = json.loads(bytes(info["header"]).decode("utf-8"))
        record["host"].update(cpu_report())
        record["model"].update({
            "file_bytes": path.stat().st_size,
            "sha256": file_digest(path),
            "recipe": header.get("quant", {}).get("recipe"),
            "bits_per_weight": header.get("quant", {}).get("bits_per_weight"),
        })  # fmt: skip
    elif load is _onnx_loader:
        import onnxruntime

        data = path.with_name(path.name + ".data")
        record["engine"] = f"qwen-edge onnxruntime {onnxruntime.__version__}"
        record["model"].update({
            "file_bytes": path.stat().st_size + (data.stat().st_size if data.is_file() else 0),
            "sha256": file_digest(path),
        })  # fmt: skip
    if cfg.measure_bandwidth:
        for n in sorted(set(cfg.threads)):
            record["memory_bandwidth_gbs"][str(n)] = read_bandwidth_subprocess(n)
    if power is not None:
        record["power"] = {
            "sensor": str(power.monitor.sensor.spec),
            "period_s": power.monitor.period,
            "idle_w": power.idle_w,
            "board_start": thermal.snapshot(),
        }
    record["rss_before_load_bytes"] = current_rss_bytes()
    for n in cfg.threads:
        r = bench_threads(path, n, cfg, power, load, progress)
        run_record = asdict(r)
        for key in ("load_s", "prefill_tok_s", "ttft_s", "decode_tok_s", "decode_bandwidth_gbs"):
            m, s = mean_std(getattr(r, key))
            run_record[key + "_mean"] = m
            run_record[key + "_std"] = s
        bw = record["memory_bandwidth_gbs"].get(str(n))
        run_record["decode_bandwidth_fraction"] = (
            run_record["decode_bandwidth_gbs_mean"] / bw if bw else None
        )
        if r.speculative:
            run_record["acceptance_rate_mean"] = mean_std(
                [x["acceptance_rate"] for x in r.speculative]
            )[0]
            run_record["tokens_per_verify_mean"] = mean_std(
                [x["tokens_per_verify"] for x in r.speculative]
            )[0]
        for phase, reps in r.power.items():
            run_record["power"][phase] = {
                "mean": {k: mean_std([x[k] for x in reps])[0] for k in reps[0]},
                "repetitions": reps,
            }
        record["runs"].append(run_record)
    if power is not None and (cfg.budget_w is not None or cfg.tokens_per_s is not None):
        governed = governed_decode(path, cfg, power, max(cfg.threads), load)
        fastest = max(r["decode_tok_s_mean"] for r in record["runs"])
        governed["unconstrained_tokens_per_s"] = fastest
        governed["throughput_kept"] = governed["tokens_per_s"] / fastest if fastest else None
        record["governed"] = governed
    if power is not None:
        end = thermal.snapshot()
        record["power"]["board_end"] = end
        record["power"]["throttled"] = thermal.throttled_during(record["power"]["board_start"], end)
        record["power"]["max_temperature_c"] = max(
            [*record["power"]["board_start"]["temperatures_c"].values(),
             *end["temperatures_c"].values()], default=None,
        )  # fmt: skip
        record["power"]["sensor_error"] = power.monitor.error
    record["peak_rss_bytes"] = peak_rss_bytes()
    return record


def format_table(record: dict[str, Any]) -> str:
    """Human-readable summary of a record."""
    m = record["model"]
    lines = [
        f"model {m['path']} ({m.get('file_bytes', 0) / 1e6:.1f} MB, recipe {m.get('recipe')})",
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
    for r in record["runs"]:
        if r.get("speculative"):
            lines.append(
                f"{r['threads']:>7} threads, speculative (MTP): acceptance "
                f"{r['acceptance_rate_mean']:.0%}, {r['tokens_per_verify_mean']:.2f} tokens per "
                "verification"
            )
    bw = ", ".join(f"{k} thr {v:.1f} GB/s" for k, v in record["memory_bandwidth_gbs"].items())
    lines.append(
        f"read bandwidth: {bw or 'not measured'}; peak RSS {record['peak_rss_bytes'] / 1e6:.0f} MB"
    )
    if "power" in record:
        lines += format_power(record)
    return "\n".join(lines)


def format_power(record: dict[str, Any]) -> list[str]:
    """The energy lines of a record with power (per phase, and the governed decode)."""
    p = record["power"]
    lines = [
        f"power: sensor {p['sensor']}, idle {p['idle_w']:.2f} W"
        + (f", max {p['max_temperature_c']:.0f} °C" if p.get("max_temperature_c") else "")
        + (", THROTTLED" if p.get("throttled") else "")
        + (f"; {p['sensor_error']}" if p.get("sensor_error") else ""),
        f"{'threads':>7} {'phase':>8} {'watts':>7} {'J/token':>9} {'tokens/J':>9} "
        f"{'J/tok above idle':>17}",
    ]
    for r in record["runs"]:
        for phase, values in r["power"].items():
            v = values["mean"]
            lines.append(
                f"{r['threads']:>7} {phase:>8} {v['watts']:>7.2f} {v['j_per_token']:>9.4f} "
                f"{v['tokens_per_j']:>9.2f} {v['j_per_token_above_idle']:>17.4f}"
            )
    g = record.get("governed")
    if g:
        lines.append(format_governed(g))
    return lines


def format_governed(g: dict[str, Any]) -> str:
    """One line: how a governed run held its budget or rate."""
    goal = f"budget {g['budget_w']:g} W" if g.get("budget_w") else ""
    if g.get("target_tokens_per_s"):
        goal += (", " if goal else "") + f"target {g['target_tokens_per_s']:g} tok/s"
    w = g.get("power_1s_w") or {}
    held = (
        f"1-s power mean {w['mean']:.2f} W, p95 {w['p95']:.2f} W"
        + (f", {w['under_budget']:.0%} of windows under budget" if "under_budget" in w else "")
        if w
        else "no 1-s windows"
    )
    kept = g.get("throughput_kept")
    return (
        f"governed ({goal}): {g['tokens_per_s']:.1f} tok/s"
        + (f" ({kept:.0%} of unconstrained)" if kept else "")
        + f", {g['energy']['j_per_token']:.4f} J/token; {held}"
        + (f"; {g['strategy']}" if g.get("strategy") else "")
        + "".join(f"; warning: {x}" for x in g.get("warnings", []))
    )


def write_json(record: dict[str, Any], path: str | Path) -> None:
    """Writes the record atomically (temporary file, fsync, rename)."""
    write_atomically(path, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
