#!/usr/bin/env python3
"""qwen-edge against llama.cpp and onnxruntime-genai on the same checkpoint, in one run.

Every measurement runs in its own child process (so peak RSS is per engine), and engines
alternate within each repetition (qwen-edge, llama.cpp, onnxruntime, then again), so a
machine-wide slowdown hits all of them alike. Prompts are the same random token ids for
every engine. The machine's streaming read bandwidth is measured at the start and the end.

    # the peers' model files (once): see `prepare --help`
    python tools/compare_peers.py prepare --checkpoint CKPT --out PEERS --llama-src SRC --ort
    # the comparison
    python tools/compare_peers.py run --threads 1,2 --repetitions 3 \\
        --qwen-edge q4=0.8b-q4.qe --qwen-edge q8=0.8b-q8.qe --qwen-edge q4m=0.8b-q4m.qe \\
        --llama q4=PEERS/Q4_0.gguf --llama q8=PEERS/Q8_0.gguf --llama q4m=PEERS/Q4_K_M.gguf \\
        --ort q4=PEERS/ort-int4 --json out.json --markdown out.md

Export time, side by side (qwen-edge's native and numba quantizers against llama.cpp's
convert_hf_to_gguf.py + llama_model_quantize, each in its own child process, engines
alternating; CPU time and peak RSS per child from wait4):

    python tools/compare_peers.py export --checkpoint CKPT --recipe q4 --llama-type Q4_K_M \
        --llama-src SRC --peers-python /work/venvs/peers/bin/python --json export.json

Each `--<engine> GROUP=PATH` puts a model in a comparison group (e.g. q4: qwen-edge q4 vs
llama.cpp Q4_0 vs onnxruntime int4). `--llama-site DIR` runs llama.cpp from another install
(e.g. one built without AVX-512 for the AVX2-only comparison, with `--isa avx2` for ours).
Needs the `peers` tools: llama-cpp-python built from source (the flags are in
docs/benchmarks.md, "Peers and how they were built"), onnxruntime-genai.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


# --- workers (run in a child process each) ------------------------------------------------------
def _peak_rss() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _prompts(seed: int, vocab: int, prompt: int, decode_prompt: int) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, prompt).tolist(), rng.integers(0, vocab, decode_prompt).tolist()


def worker_qwen_edge(a: argparse.Namespace) -> dict[str, Any]:
    from qwen_edge.backends.native import Model

    start = time.perf_counter()
    model = Model.load(a.model, threads=a.threads, isa=a.isa, context=a.prompt + a.decode + 64)
    load_s = time.perf_counter() - start
    long, short = _prompts(a.seed, min(model.config.vocab_size, 248000), a.prompt, a.decode_prompt)
    start, cpu = time.perf_counter(), time.process_time()
    model.forward(long, model.new_state())
    ttft, ttft_cpu = time.perf_counter() - start, time.process_time() - cpu
    state = model.new_state()
    logits = model.forward(short, state)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(a.decode):
        logits = model.forward([int(np.argmax(logits))], state)
    decode_s, decode_cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "isa": model.isa,
        "load_s": load_s,
        "ttft_s": ttft,
        "decode_s": decode_s,
        "ttft_cpu_s": ttft_cpu,
        "decode_cpu_s": decode_cpu,
        "decode_bytes_per_token": model.decode_weight_bytes,
        "state_bytes": state.cache_bytes,
    }


def worker_llama(a: argparse.Namespace) -> dict[str, Any]:
    import llama_cpp

    start = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=a.model,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        n_ctx=a.prompt + a.decode + 64,
        n_batch=512,
        logits_all=False,
        verbose=False,
    )
    load_s = time.perf_counter() - start
    long, short = _prompts(a.seed, min(llm.n_vocab(), 248000), a.prompt, a.decode_prompt)
    start, cpu = time.perf_counter(), time.process_time()
    llm.eval(long)
    ttft, ttft_cpu = time.perf_counter() - start, time.process_time() - cpu
    llm.reset()
    llm.eval(short)
    vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(vocab,))

    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(a.decode):
        llm.eval([int(np.argmax(last_logits()))])
    decode_s, decode_cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "isa": llama_cpp.llama_print_system_info().decode()[:200],
        "load_s": load_s,
        "ttft_s": ttft,
        "decode_s": decode_s,
        "ttft_cpu_s": ttft_cpu,
        "decode_cpu_s": decode_cpu,
    }


def worker_ort(a: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime_genai as og

    folder = Path(a.model)
    cfg_path = folder / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    session = cfg["model"]["decoder"].setdefault("session_options", {})
    if session.get("intra_op_num_threads") != a.threads:
        session["intra_op_num_threads"] = a.threads
        cfg_path.write_text(json.dumps(cfg, indent=2))
    start = time.perf_counter()
    model = og.Model(str(folder))
    load_s = time.perf_counter() - start
    vocab = int(cfg["model"]["vocab_size"])
    long, short = _prompts(a.seed, min(vocab, 248000), a.prompt, a.decode_prompt)

    def generator(n: int) -> Any:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=n + a.decode + 8, do_sample=False)
        return og.Generator(model, params)

    g = generator(len(long))
    start, cpu = time.perf_counter(), time.process_time()
    g.append_tokens(np.asarray(long, np.int32))
    g.get_next_tokens()  # forces the logits of the last prompt token
    ttft, ttft_cpu = time.perf_counter() - start, time.process_time() - cpu
    del g
    g = generator(len(short))
    g.append_tokens(np.asarray(short, np.int32))
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(a.decode):
        g.generate_next_token()
    decode_s, decode_cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "isa": "onnxruntime-genai " + og.__version__,
        "load_s": load_s,
        "ttft_s": ttft,
        "decode_s": decode_s,
        "ttft_cpu_s": ttft_cpu,
        "decode_cpu_s": decode_cpu,
    }


WORKERS = {"qwen-edge": worker_qwen_edge, "llama": worker_llama, "ort": worker_ort}
ENGINE_NAMES = {"qwen-edge": "qwen-edge", "llama": "llama.cpp", "ort": "onnxruntime-genai"}


def model_bytes(path: str) -> int:
    """Bytes of the model's weights: the file, or an onnxruntime folder's model.onnx(.data)
    (not its tokenizer or the MTP head, which decoding does not use)."""
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.glob("model.onnx*"))
    return p.stat().st_size


def run_worker(
    engine: str, model: str, threads: int, a: argparse.Namespace, seed: int, llama_site: str | None
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "worker",
        "--engine",
        engine,
        "--model",
        model,
        "--threads",
        str(threads),
        "--prompt",
        str(a.prompt),
        "--decode",
        str(a.decode),
        "--decode-prompt",
        str(a.decode_prompt),
        "--seed",
        str(seed),
    ]
    if engine == "qwen-edge" and a.isa:
        cmd += ["--isa", a.isa]
    env = dict(os.environ)
    if engine == "llama" and llama_site:
        env["PYTHONPATH"] = llama_site + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{engine} {model} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the comparison -----------------------------------------------------------------------------
def parse_models(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        group, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"expected GROUP=PATH, got {item!r}")
        out[group] = path
    return out


def summarize(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0}


def cmd_run(a: argparse.Namespace) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from qwen_edge.evaluation.bench import read_bandwidth_subprocess

    engines = {
        "qwen-edge": parse_models(a.qwen_edge),
        "llama": parse_models(a.llama),
        "ort": parse_models(a.ort),
    }
    threads = [int(t) for t in a.threads.split(",")]
    load_start = os.getloadavg()
    bandwidth_start = {str(n): read_bandwidth_subprocess(n) for n in threads}
    results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    groups = sorted({g for models in engines.values() for g in models})
    for rep in range(a.warmup + a.repetitions):
        for n in threads:
            for group in groups:
                for engine, models in engines.items():
                    if group not in models:
                        continue
                    r = run_worker(engine, models[group], n, a, a.seed + rep, a.llama_site)
                    print(
                        f"rep {rep} {group} {engine} threads {n}: "
                        f"prefill {a.prompt / r['ttft_s']:.1f} tok/s, "
                        f"decode {a.decode / r['decode_s']:.1f} tok/s; per CPU-s: "
                        f"prefill {a.prompt / r['ttft_cpu_s']:.1f}, "
                        f"decode {a.decode / r['decode_cpu_s']:.1f} "
                        f"(load {os.getloadavg()[0]:.1f})",
                        file=sys.stderr,
                        flush=True,
                    )
                    if rep >= a.warmup:
                        results.setdefault((group, engine, n), []).append(r)
    bandwidth_end = {str(n): read_bandwidth_subprocess(n) for n in threads}

    rows = []
    for (group, engine, n), reps in sorted(results.items()):
        path = engines[engine][group]
        size = model_bytes(path)
        decode = [a.decode / r["decode_s"] for r in reps]
        prefill = [a.prompt / r["ttft_s"] for r in reps]
        per_token = reps[0].get("decode_bytes_per_token") or size
        bw = (bandwidth_start[str(n)] + bandwidth_end[str(n)]) / 2
        rows.append(
            {
                "group": group,
                "engine": ENGINE_NAMES[engine],
                "threads": n,
                "model": path,
                "file_bytes": size,
                "isa": reps[0].get("isa", ""),
                "prefill_tok_s": summarize(prefill),
                "decode_tok_s": summarize(decode),
                "ttft_s": summarize([r["ttft_s"] for r in reps]),
                # per CPU-second of the process (ours and llama.cpp's workers): on a loaded
                # machine the fair rate at 1 thread, where nobody spins; at 2 threads
                # llama.cpp's OpenMP workers spin while they wait and count as busy
                "prefill_tok_per_cpu_s": summarize(
                    [a.prompt / r["ttft_cpu_s"] for r in reps if r.get("ttft_cpu_s")]
                ),
                "decode_tok_per_cpu_s": summarize(
                    [a.decode / r["decode_cpu_s"] for r in reps if r.get("decode_cpu_s")]
                ),
                "load_s": summarize([r["load_s"] for r in reps]),
                "peak_rss_bytes": max(r["peak_rss_bytes"] for r in reps),
                "state_bytes": reps[0].get("state_bytes"),
                "decode_bytes_per_token": per_token,
                "decode_bandwidth_gbs": per_token * float(np.mean(decode)) / 1e9,
                "read_bandwidth_gbs": bw,
                "per_repetition": reps,
            }
        )
    record = {
        "schema": "qwen-edge-compare/1",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "config": {k: v for k, v in vars(a).items() if k != "func"},
        "read_bandwidth_gbs": {"start": bandwidth_start, "end": bandwidth_end},
        # 1/5/15-minute load averages: other jobs on the machine, which the ratios survive
        # better than the rates (engines alternate)
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "rows": rows,
    }
    table = markdown(rows)
    print(table)
    if a.json:
        Path(a.json).write_text(json.dumps(record, indent=2) + "\n")
    if a.markdown:
        Path(a.markdown).write_text(table + "\n")
    return 0


def markdown(rows: list[dict[str, Any]]) -> str:
    """One table: each group and thread count, engines side by side, ratios vs the peers."""
    lines = [
        "| group | threads | engine | file MB | prefill tok/s | TTFT s | decode tok/s | "
        "load s | peak RSS MB | decode GB/s (of read bw) | decode vs best peer | "
        "prefill vs llama.cpp |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        by_key.setdefault((r["group"], r["threads"]), []).append(r)
    for (group, n), rs in sorted(by_key.items()):
        ours = next((r for r in rs if r["engine"] == "qwen-edge"), None)
        peers = [r for r in rs if r["engine"] != "qwen-edge"]
        best = max(peers, key=lambda r: r["decode_tok_s"]["mean"], default=None)
        llama = next((r for r in peers if r["engine"] == "llama.cpp"), None)
        for r in rs:
            dec, pre = r["decode_tok_s"]["mean"], r["prefill_tok_s"]["mean"]
            ratio_dec = ratio_pre = ""
            if r is ours and best:
                ratio_dec = f"{dec / best['decode_tok_s']['mean']:.2f}x ({best['engine']})"
            if r is ours and llama:
                ratio_pre = f"{pre / llama['prefill_tok_s']['mean']:.2f}x"
            frac = r["decode_bandwidth_gbs"] / r["read_bandwidth_gbs"]
            lines.append(
                f"| {group} | {n} | {r['engine']} | {r['file_bytes'] / 1e6:.0f} | "
                f"{pre:.1f} ± {r['prefill_tok_s']['std']:.1f} | {r['ttft_s']['mean']:.2f} | "
                f"{dec:.1f} ± {r['decode_tok_s']['std']:.1f} | {r['load_s']['mean']:.3f} | "
                f"{r['peak_rss_bytes'] / 1e6:.0f} | {r['decode_bandwidth_gbs']:.1f} ({frac:.0%}) | "
                f"{ratio_dec} | {ratio_pre} |"
            )
    return "\n".join(lines)


# --- preparing the peers' files -----------------------------------------------------------------
def cmd_prepare(a: argparse.Namespace) -> int:
    """GGUF bf16 -> Q4_0 / Q8_0 / Q4_K_M with llama-cpp-python's own converter and quantizer,
    and the onnxruntime-genai int4 folder with its model builder (docs/benchmarks.md)."""
    import llama_cpp

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    bf16 = out / "bf16.gguf"
    if not bf16.exists():
        converter = Path(a.llama_src) / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
        env = dict(os.environ)
        gguf_py = str(converter.parent / "gguf-py")
        env["PYTHONPATH"] = gguf_py + os.pathsep + env.get("PYTHONPATH", "")
        subprocess.run(
            [
                sys.executable,
                str(converter),
                a.checkpoint,
                "--no-mtp",
                "--outtype",
                "bf16",
                "--outfile",
                str(bf16),
            ],
            check=True,
            env=env,
        )
    for name, ftype in (
        ("Q4_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0),
        ("Q8_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0),
        ("Q4_K_M", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M),  # the size class of our q4m
    ):
        dst = out / f"{name}.gguf"
        if dst.exists():
            continue
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = os.cpu_count() or 1
        rc = llama_cpp.llama_model_quantize(str(bf16).encode(), str(dst).encode(), params)
        if rc != 0:
            raise SystemExit(f"llama_model_quantize {name} failed ({rc})")
    ort = out / "ort-int4"
    if a.ort and not ort.exists():
        cache = out / "ort-cache"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "onnxruntime_genai.models.builder",
                "-i",
                a.checkpoint,
                "-o",
                str(ort),
                "-p",
                "int4",
                "-e",
                "cpu",
                "-c",
                str(cache),
            ],
            check=True,
        )
        # onnxruntime-genai 0.18 with onnxruntime 1.32 fails to load the LM head it shares with
        # the MTP head ("GetMemoryInfo for CPU should not be used"); decoding needs neither.
        cfg_path = ort / "genai_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["model"]["decoder"].pop("shared_initializers", None)
        cfg["model"].pop("mtp", None)
        cfg_path.write_text(json.dumps(cfg, indent=2))
        tok_cfg = ort / "tokenizer_config.json"
        if tok_cfg.exists():  # the builder rejects Qwen3_5Tokenizer
            t = json.loads(tok_cfg.read_text())
            t["tokenizer_class"] = "Qwen2Tokenizer"
            tok_cfg.write_text(json.dumps(t, indent=2))
        shutil.rmtree(cache, ignore_errors=True)
    print(f"peers' files in {out}")
    return 0


def timed(
    cmd: list[str],
    env: dict[str, str] | None = None,
    label: str = "",
    every_s: float = 30.0,
    log: Any = None,
) -> dict[str, float]:
    """Runs cmd as a child; its wall time, CPU time (user + system) and peak RSS (wait4).

    The child's stderr (progress bars, the converter's per-tensor log) is passed on, one line
    at most every `every_s` seconds with `label` and the elapsed time, so a half-hour export
    shows where it is; the last lines are kept for the error if the child fails."""
    log = log if log is not None else sys.stderr
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    tail: list[str] = []
    last_shown = -every_s
    pending = ""
    partial = b""
    # tqdm rewrites its line with \r: split on both, so each update counts as a line.
    while chunk := proc.stderr.read1(65536):
        parts = (partial + chunk).replace(b"\r", b"\n").split(b"\n")
        partial = parts.pop()
        for raw in parts:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            tail = [*tail[-39:], line]
            pending = line
            now = time.perf_counter() - start
            if now - last_shown >= every_s:
                print(f"  [{label} {now:.0f} s] {line[:160]}", file=log, flush=True)
                last_shown, pending = now, ""
    if partial.strip():
        tail.append(partial.decode(errors="replace").strip())
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if pending:
        print(f"  [{label} {wall:.0f} s] {pending[:160]}", file=log, flush=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}):\n" + "\n".join(tail)
        )
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
    }


# Bits per weight of each output, to check the disk before writing it: a bf16 checkpoint holds
# 2 bytes per weight, so its size says the weight count (vision tower and MTP head included,
# which both exporters leave out: the estimate errs high). Our q4 recipe is ~4.8 bits.
OUTPUT_BITS = {
    "q4": 5.0, "q4m": 5.5, "q8": 8.5,  # qwen-edge recipes
    "bf16": 16.0, "q8_0": 8.5,  # convert_hf_to_gguf --outtype
    "Q4_0": 4.5, "Q4_K_M": 4.9, "Q8_0": 8.5,  # llama_model_quantize types
}  # fmt: skip


def checkpoint_weights(checkpoint: Path) -> int:
    """Weight count of a bf16 checkpoint folder (or file), from its safetensors bytes."""
    files = [checkpoint] if checkpoint.is_file() else list(checkpoint.glob("*.safetensors"))
    if not files:
        raise SystemExit(f"no *.safetensors in {checkpoint}")
    return sum(f.stat().st_size for f in files) // 2


def disk_needed(weights: int, engine: str, a: argparse.Namespace) -> int:
    """Bytes the engine's step writes at its peak: our model file, or llama.cpp's converter
    output and the quantized GGUF side by side (the intermediate is deleted afterwards)."""
    if engine == "llama":
        bits = OUTPUT_BITS.get(a.llama_outtype, 16.0) + OUTPUT_BITS.get(a.llama_type, 8.5)
    else:
        bits = OUTPUT_BITS.get(a.recipe, 8.5)
    return int(weights * bits / 8)


def check_disk(folder: Path, need: int, what: str) -> None:
    """A clear error before starting a step that would fill the disk (a full disk half-way
    through a 9B conversion costs its half hour and leaves a partial file)."""
    free = shutil.disk_usage(folder).free
    if free < need:
        raise SystemExit(
            f"{what} needs about {need / 1e9:.1f} GB in {folder}, {free / 1e9:.1f} GB free: "
            "free some space, use --llama-outtype q8_0 (half the converter's output), "
            "or --skip-disk-check if the estimate is wrong"
        )


def cmd_export(a: argparse.Namespace) -> int:
    """Export time of both engines on one checkpoint, alternating, one child process each."""
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    converter = Path(a.llama_src) / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(converter.parent / "gguf-py") + os.pathsep + env.get("PYTHONPATH", "")
    quantize = (
        "import llama_cpp, sys\n"
        "p = llama_cpp.llama_model_quantize_default_params()\n"
        f"p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_{a.llama_type}\n"
        f"p.nthread = {a.threads}\n"
        f"p.allow_requantize = {a.llama_outtype != 'bf16'}\n"
        "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))"
    )
    qe_out, gguf = work / "export.qe", work / "export.gguf"
    # The converter's output: bf16 (what llama.cpp's docs do) or q8_0, half the disk for a 9B
    # (quantize then requantizes it: allow_requantize).
    bf16 = work / f"export-{a.llama_outtype}.gguf"
    runs: dict[str, list[dict[str, float]]] = {}
    sizes: dict[str, int] = {}

    def keep(path: Path, name: str) -> None:
        """--keep: the file stays in the workdir under `name` (the last repetition's);
        otherwise it is deleted (a 9B's files would fill the disk)."""
        if a.keep:
            path.replace(work / name)
        else:
            path.unlink()

    weights = checkpoint_weights(Path(a.checkpoint))
    for rep in range(a.repetitions):
        for engine in a.engines.split(","):
            if engine not in ("native", "python", "llama"):
                raise SystemExit(f"unknown engine {engine!r} (native, python, llama)")
            need = disk_needed(weights, engine, a)
            if not a.skip_disk_check:
                check_disk(work, need, f"rep {rep} {engine}")
            print(
                f"rep {rep} {engine}: starting ({need / 1e9:.1f} GB to write, "
                f"{shutil.disk_usage(work).free / 1e9:.1f} GB free)",
                file=sys.stderr,
                flush=True,
            )
            if engine in ("native", "python"):
                cmd = [sys.executable, "-m", "qwen_edge", "export", a.checkpoint, "-o",
                       str(qe_out), "--quant", a.recipe, "--quantizer", engine,
                       "--threads", str(a.threads)]  # fmt: skip
                env_qe = dict(os.environ, NUMBA_NUM_THREADS=str(a.threads))
                r = timed(cmd, env_qe, engine, a.progress_every)
                sizes[engine] = qe_out.stat().st_size
                keep(qe_out, f"{engine}.qe")
            else:
                try:
                    c = timed([a.peers_python, str(converter), a.checkpoint, "--no-mtp",
                               "--outtype", a.llama_outtype, "--outfile", str(bf16)], env,
                              "convert", a.progress_every)  # fmt: skip
                    q = timed([a.peers_python, "-c", quantize, str(bf16), str(gguf)], None,
                              "quantize", a.progress_every)  # fmt: skip
                finally:  # a failed step leaves no multi-GB partial file behind
                    bf16.unlink(missing_ok=True)
                r = {
                    "wall_s": c["wall_s"] + q["wall_s"],
                    "cpu_s": c["cpu_s"] + q["cpu_s"],
                    "peak_rss_bytes": max(c["peak_rss_bytes"], q["peak_rss_bytes"]),
                    "convert_wall_s": c["wall_s"],
                    "convert_cpu_s": c["cpu_s"],
                    "quantize_wall_s": q["wall_s"],
                    "quantize_cpu_s": q["cpu_s"],
                }
                sizes[engine] = gguf.stat().st_size
                keep(gguf, f"{a.llama_type}.gguf")
            print(f"rep {rep} {engine}: {json.dumps(r)}", file=sys.stderr, flush=True)
            runs.setdefault(engine, []).append(r)
    summary: dict[str, Any] = {}
    for engine, rs in runs.items():
        summary[engine] = {
            "wall_s": summarize([r["wall_s"] for r in rs]),
            "cpu_s": summarize([r["cpu_s"] for r in rs]),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rs),
            "file_bytes": sizes[engine],
            "runs": rs,
        }
    if "llama" in summary:
        ref = summary["llama"]
        for engine in ("native", "python"):
            if engine in summary:
                summary[engine]["vs_llama"] = {
                    k: summary[engine][k]["mean"] / ref[k]["mean"] for k in ("wall_s", "cpu_s")
                }
                summary[engine]["vs_llama"]["peak_rss"] = (
                    summary[engine]["peak_rss_bytes"] / ref["peak_rss_bytes"]
                )
    record = {
        "checkpoint": a.checkpoint,
        "recipe": a.recipe,
        "llama_type": a.llama_type,
        "llama_outtype": a.llama_outtype,
        "threads": a.threads,
        "repetitions": a.repetitions,
        "engines": summary,
        "load_average": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = json.dumps(record, indent=2)
    if a.json:
        Path(a.json).write_text(text + "\n")
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("run", help="run the comparison")
    p.add_argument("--qwen-edge", action="append", metavar="GROUP=FILE")
    p.add_argument("--llama", action="append", metavar="GROUP=GGUF")
    p.add_argument("--ort", action="append", metavar="GROUP=FOLDER")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--decode-prompt", type=int, default=16)
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--isa", help="force qwen-edge's kernel table (e.g. avx2)")
    p.add_argument("--llama-site", help="PYTHONPATH entry with another llama_cpp build")
    p.add_argument("--json")
    p.add_argument("--markdown")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("prepare", help="make the peers' model files from a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--llama-src", required=True, help="unpacked llama-cpp-python sdist")
    p.add_argument("--ort", action="store_true", help="also build the onnxruntime-genai int4 model")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("export", help="time the export of both engines side by side")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--recipe", default="q4", help="qwen-edge recipe (q4, q4m, q8)")
    p.add_argument("--llama-type", default="Q4_K_M", help="llama.cpp ftype (Q4_K_M, Q4_0, Q8_0)")
    p.add_argument("--llama-src", required=True, help="unpacked llama-cpp-python sdist")
    p.add_argument("--peers-python", default=sys.executable, help="python with llama_cpp, torch")
    p.add_argument("--engines", default="native,python,llama")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repetitions", type=int, default=1)
    p.add_argument("--workdir", default="export-compare")
    p.add_argument(
        "--llama-outtype",
        default="bf16",
        choices=["bf16", "q8_0"],
        help="convert_hf_to_gguf's output before quantizing (q8_0: half the disk, requantized)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the outputs in the workdir (native.qe, python.qe, <LLAMA_TYPE>.gguf)",
    )
    p.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        metavar="S",
        help="pass on the children's progress (stderr) at most once every S seconds",
    )
    p.add_argument(
        "--skip-disk-check",
        action="store_true",
        help="start a step even if the free disk looks too small for its outputs",
    )
    p.add_argument("--json")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("worker", help=argparse.SUPPRESS)
    p.add_argument("--engine", choices=sorted(WORKERS), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--prompt", type=int, required=True)
    p.add_argument("--decode", type=int, required=True)
    p.add_argument("--decode-prompt", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--isa")
    p.set_defaults(func=None)

    a = parser.parse_args(argv)
    if a.cmd == "worker":
        result = WORKERS[a.engine](a)
        result["peak_rss_bytes"] = _peak_rss()
        print(json.dumps(result))
        return 0
    return int(a.func(a))


if __name__ == "__main__":
    sys.exit(main())
