#!/usr/bin/env python3
"""Cost against context length: prefill and decode tokens/s at growing depths, qwen-edge beside
llama.cpp, engines alternating in one run; plus the state memory against context.

Each worker (a child process: qwen-edge in this Python, llama.cpp in the peers' Python) feeds
one long prompt of random ids in `--chunk`-token calls. When the prompt reaches a depth of
`--depths`, it records the rate of the chunk that ended there (prefill tok/s at that depth:
each of its tokens attends to the whole cache before it) and the cumulative rate (a prompt of
that length); then the engines take turns decoding `--decode` greedy tokens, `--probes` times
each (decode tok/s at that depth), and go on. The workers move in lock step, one running at a
time, so both engines' figures at a depth come from the same few minutes. One run to the
deepest depth measures every shallower one on the way; Ctrl-C or `--timeout` ends it early and
keeps the depths it finished:

    python tools/context_curves.py run --qwen-edge models/0.8b-q4.qe \\
        --llama models/peers/0.8b/Q4_0.gguf --depths 1024,4096,16384 --threads 2 \\
        --repetitions 2 --json docs/context/curves.json
    python tools/context_curves.py plot --json docs/context/curves.json \\
        --png docs/context/curves.png --markdown docs/context/curves.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PEERS_PYTHON = "/work/venvs/peers/bin/python"
ENGINE_NAMES = {"qwen-edge": "qwen-edge", "llama": "llama.cpp"}


# --- workers (one child process each) -----------------------------------------------------------
def _depths(a: argparse.Namespace) -> list[int]:
    """--depths, shallowest first."""
    return sorted(int(d) for d in a.depths.split(","))


def _serve(a: argparse.Namespace, vocab: int, feed: Any, step: Any, reset: Any) -> None:
    """Answer the run's commands on stdin with one JSON line each on stdout until `done`:
    `next` feeds the prompt in `--chunk`-token calls (feed(ids)) to the next of `--depths` and
    gives the rate of the chunk that ended there and of the whole prompt so far; `decode`
    decodes `--decode` greedy tokens (step() returns their seconds) and gives their rate;
    `warm` runs a chunk and a probe, then reset(): the first depth's figures would otherwise
    pay for faulting in the weights and buffers. The run sends it to one worker at a time,
    after each has loaded, so no engine is measured while another loads or warms up."""
    depths = _depths(a)
    ids = np.random.default_rng(a.seed).integers(0, vocab, depths[-1]).tolist()
    done, prefill_s, at = 0, 0.0, 0
    for line in sys.stdin:
        command = line.strip()
        if command == "done":
            return
        if command == "warm":
            feed(ids[: min(a.chunk, depths[-1])])
            step()
            reset()
            reply: dict[str, Any] = {"warm": True}
        elif command == "next":
            d = depths[at]
            at += 1
            while done < d:
                n = min(a.chunk, d - done)
                start = time.perf_counter()
                feed(ids[done : done + n])
                chunk_s = time.perf_counter() - start
                prefill_s += chunk_s
                done += n
            reply = {
                "depth": d,
                "chunk_tokens": n,
                "prefill_chunk_tok_s": n / chunk_s,
                "prefill_cumulative_tok_s": d / prefill_s,
            }
        elif command == "decode":
            reply = {"decode_tok_s": a.decode / step()}
        else:
            raise SystemExit(f"unknown command {command!r}")
        print(json.dumps(reply), flush=True)


def _context(a: argparse.Namespace) -> int:
    """Positions a worker needs: the deepest prompt and every decode probe."""
    depths = _depths(a)
    return depths[-1] + a.decode * a.probes * len(depths) + 1


def worker_qwen_edge(a: argparse.Namespace) -> dict[str, Any]:
    from qwen_edge.backends.native import Model

    context = _context(a)
    model = Model.load(a.model, threads=a.threads, context=context, kv_cache=a.kv_cache)
    state = model.new_state(context)
    last: list[np.ndarray] = []

    def feed(chunk: list[int]) -> None:
        last[:] = [model.forward(chunk, state)]

    def step() -> float:
        logits = last[0]
        start = time.perf_counter()
        for _ in range(a.decode):
            logits = model.forward([int(np.argmax(logits))], state)
        last[:] = [logits]
        return time.perf_counter() - start

    _serve(a, min(model.config.vocab_size, 248000), feed, step, state.reset)
    return {"isa": model.isa, "kv_cache": a.kv_cache, "state_bytes": model.state_bytes(context)}


def worker_llama(a: argparse.Namespace) -> dict[str, Any]:
    import llama_cpp

    # Our int8 and 4-bit caches against llama.cpp's nearest: q8_0 and q4_0.
    cache_type = {"q8": llama_cpp.GGML_TYPE_Q8_0, "q4": llama_cpp.GGML_TYPE_Q4_0}.get(a.kv_cache)
    llm = llama_cpp.Llama(
        model_path=a.model,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        n_ctx=_context(a),
        n_batch=a.chunk,
        n_ubatch=a.chunk,
        logits_all=False,
        verbose=False,
        # Off is the binding's default and, here, the faster at depth (docs/benchmarks.md);
        # llama-cli and llama-server choose on for a CPU. Its quantized caches need it on.
        flash_attn=a.llama_flash_attn == "on",
        **({"type_k": cache_type, "type_v": cache_type} if cache_type is not None else {}),
    )
    vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(vocab,))

    def step() -> float:
        start = time.perf_counter()
        for _ in range(a.decode):
            llm.eval([int(np.argmax(last_logits()))])
        return time.perf_counter() - start

    _serve(a, min(vocab, 248000), llm.eval, step, llm.reset)
    return {
        "isa": llama_cpp.llama_print_system_info().decode()[:200],
        "kv_cache": a.kv_cache,
        "flash_attn": a.llama_flash_attn,
    }


WORKERS = {"qwen-edge": worker_qwen_edge, "llama": worker_llama}


def cmd_worker(a: argparse.Namespace) -> int:
    out = WORKERS[a.engine](a)
    out["peak_rss_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    print(json.dumps(out))
    return 0


# --- the run ------------------------------------------------------------------------------------
class Worker:
    """One engine's worker process, asked one command at a time (its stderr kept in a file)."""

    def __init__(self, engine: str, model: str, a: argparse.Namespace, seed: int) -> None:
        python = sys.executable if engine == "qwen-edge" else a.peers_python
        cmd = [python, __file__, "worker", "--engine", engine, "--model", model]
        cmd += ["--threads", str(a.threads), "--depths", a.depths, "--chunk", str(a.chunk)]
        cmd += ["--decode", str(a.decode), "--probes", str(a.probes), "--seed", str(seed)]
        cmd += ["--kv-cache", a.kv_cache, "--llama-flash-attn", a.llama_flash_attn]
        env = dict(os.environ, OMP_WAIT_POLICY="passive")
        if engine == "llama":
            env.pop("PYTHONPATH", None)
        self.engine, self.busy_s, self._buf = engine, 0.0, b""
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, env=env
        )

    def ask(self, command: str, deadline: float) -> dict[str, Any]:
        """Send a command (`done`: the worker's summary); its JSON reply (lines that are not
        JSON are the engine's own)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        start = time.monotonic()
        try:
            self.proc.stdin.write(command.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"{self.engine} {self._ended()} before {command!r}") from None
        fd = self.proc.stdout.fileno()
        while True:
            line, sep, rest = self._buf.partition(b"\n")
            if sep:
                self._buf = rest
                if line.startswith(b"{"):
                    self.busy_s += time.monotonic() - start
                    return dict(json.loads(line))
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"{self.engine}: no reply to {command!r} before the deadline")
            data = os.read(fd, 1 << 16)
            if not data:
                self._err.seek(0)
                tail = self._err.read().decode(errors="replace")[-3000:]
                raise RuntimeError(f"{self.engine} {self._ended()} during {command!r}:\n{tail}")
            self._buf += data

    def _ended(self) -> str:
        """How the worker ended: its exit status, or the signal (SIGILL: a build for
        instructions this CPU lacks, as llama.cpp with GGML_AVX_VNNI on a Zen 4)."""
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return "closed its output"
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._err.close()


def run_lockstep(engines: dict[str, str], a: argparse.Namespace, rep: int) -> list[dict[str, Any]]:
    """One walk of every engine to the deepest depth, in lock step: at each depth each engine
    feeds its prompt there in turn (the order alternating from depth to depth), then they
    take turns decoding --probes times. So an engine's figures at a depth and the other's were
    measured minutes apart, not a whole walk apart: on a shared machine the neighbours' load
    drifts over the hour a 64k walk takes. One engine runs at a time; the other waits."""
    depths = _depths(a)
    deadline = time.monotonic() + a.timeout
    workers = [Worker(e, m, a, a.seed + rep) for e, m in engines.items()]
    points: dict[str, list[dict[str, Any]]] = {w.engine: [] for w in workers}
    info: dict[str, dict[str, Any]] = {w.engine: {} for w in workers}
    stopped = ""  # why the walk ended early, if it did
    try:
        for w in workers:
            w.ask("warm", deadline)
        for i, d in enumerate(depths):
            order = workers if (rep + i) % 2 == 0 else workers[::-1]
            for w in order:
                points[w.engine].append(w.ask("next", deadline))
            for j in range(a.probes):
                for w in order if j % 2 else order[::-1]:
                    rate = w.ask("decode", deadline)["decode_tok_s"]
                    points[w.engine][-1].setdefault("decode_probes_tok_s", []).append(rate)
            line = []
            for w in workers:
                p = points[w.engine][-1]
                p["decode_tok_s"] = float(np.median(p["decode_probes_tok_s"]))
                line.append(f"{w.engine} {p['prefill_chunk_tok_s']:.1f} / {p['decode_tok_s']:.1f}")
            print(f"rep {rep} depth {d}: " + ", ".join(line), file=sys.stderr, flush=True)
        for w in workers:
            info[w.engine] = w.ask("done", deadline)
    except TimeoutError as e:
        print(f"{e}; keeping the depths reached", file=sys.stderr)
        stopped = "timed_out"
    except KeyboardInterrupt:
        # An hour's walk stopped by hand still has its finished depths worth writing down.
        print("interrupted; keeping the depths reached", file=sys.stderr)
        stopped = "interrupted"
    finally:
        for w in workers:
            w.close()
    runs = []
    for w in workers:
        done = [p for p in points[w.engine] if "decode_tok_s" in p]
        runs.append(
            {
                **info[w.engine],
                "engine": ENGINE_NAMES[w.engine],
                "model": engines[w.engine],
                "repetition": rep,
                "busy_s": w.busy_s,
                "points": done,
                **({stopped: True} if stopped else {}),
            }
        )
    return runs


def state_memory(depths: list[int], threads: int) -> list[dict[str, Any]]:
    """qwen-edge's state bytes (State::bytes_for) of the 0.8B shape against context."""
    from qwen_edge.backends.native import state_bytes_for
    from qwen_edge.export import presets
    from qwen_edge.formats.config import ModelConfig

    cfg = ModelConfig.from_hf(presets.hf_config("0.8b"))
    return [
        {
            "context": c,
            **{
                kv: state_bytes_for(cfg, c, kv, batch=128, threads=threads)
                for kv in ("f16", "q8", "q4")
            },
        }
        for c in depths
    ]


def cmd_run(a: argparse.Namespace) -> int:
    if a.llama and a.kv_cache in ("q8", "q4") and a.llama_flash_attn == "off":
        raise SystemExit(f"llama.cpp's {a.kv_cache}_0 KV cache needs --llama-flash-attn on")
    if a.llama and not Path(a.peers_python).is_file():
        raise SystemExit(f"no python at {a.peers_python}: give --peers-python, one with llama_cpp")
    engines = {"qwen-edge": a.qwen_edge, "llama": a.llama}
    engines = {k: v for k, v in engines.items() if v}
    runs: list[dict[str, Any]] = []
    for rep in range(a.repetitions):
        runs += run_lockstep(engines, a, rep)
        if runs[-1].get("interrupted"):
            break
    depths = _depths(a)
    record = {
        "schema": "qwen-edge-context-curves/2",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "config": {k: v for k, v in vars(a).items() if k != "func"},
        "runs": runs,
        "state_memory": state_memory(sorted(set(depths) | {65536, 131072, 262144}), a.threads),
    }
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        if a.append and Path(a.json).exists():
            old = json.loads(Path(a.json).read_text())
            record["runs"] = old["runs"] + runs
            record["command"] = old["command"] + " ; " + record["command"]
        Path(a.json).write_text(json.dumps(record, indent=2) + "\n")
    print(markdown(record))
    return 0


# --- tables and the plot ------------------------------------------------------------------------
def label_of(run: dict[str, Any]) -> str:
    """The engine, its cache when not f16, and llama.cpp's flash attention when on."""
    notes = [f"{run['kv_cache']} KV"] if run.get("kv_cache", "f16") != "f16" else []
    notes += ["flash attn"] if run.get("flash_attn") == "on" else []
    return run["engine"] + (f" ({', '.join(notes)})" if notes else "")


def _cache_of(label: str) -> str:
    """The KV cache a label names ("q8", "q4"), or "f16"."""
    for kv in ("q8", "q4"):
        if f"{kv} KV" in label:
            return kv
    return "f16"


# State memory columns: the caches and their names (records before the 4-bit cache lack q4).
STATE_KINDS = (("f16", "fp16 KV"), ("q8", "int8 KV"), ("q4", "4-bit KV"))


def curves(record: dict[str, Any]) -> dict[str, dict[int, dict[str, list[float]]]]:
    """engine label -> depth -> metric -> values over repetitions."""
    out: dict[str, dict[int, dict[str, list[float]]]] = {}
    for r in record["runs"]:
        label = label_of(r)
        for p in r["points"]:
            m = out.setdefault(label, {}).setdefault(p["depth"], {})
            for k in ("prefill_chunk_tok_s", "prefill_cumulative_tok_s"):
                m.setdefault(k, []).append(p[k])
            # Every probe is a sample (schema 1 had one per depth).
            probes = p.get("decode_probes_tok_s", [p["decode_tok_s"]])
            m.setdefault("decode_tok_s", []).extend(probes)
    return out


def _fmt(values: list[float]) -> str:
    mean = float(np.mean(values))
    return (
        f"{mean:.1f}"
        + (f" ± {np.std(values, ddof=1):.1f}" if len(values) > 1 else "")
        + (f" (n={len(values)})" if len(values) != 2 else "")
    )


def markdown(record: dict[str, Any]) -> str:
    c = curves(record)
    lines = [
        "| engine | depth | prefill tok/s (chunk at depth) | prefill tok/s (whole prompt) "
        "| decode tok/s | decode vs 1k |",
        "|---|---|---|---|---|---|",
    ]
    for label, by_depth in c.items():
        first = by_depth[min(by_depth)]["decode_tok_s"]
        for d in sorted(by_depth):
            m = by_depth[d]
            rel = np.mean(m["decode_tok_s"]) / np.mean(first)
            lines.append(
                f"| {label} | {d} | {_fmt(m['prefill_chunk_tok_s'])} | "
                f"{_fmt(m['prefill_cumulative_tok_s'])} | {_fmt(m['decode_tok_s'])} | {rel:.2f} |"
            )
    # Ours over each llama.cpp setting with the same cache type.
    pairs = [
        (o, p)
        for o in c
        if o.startswith("qwen-edge")
        for p in c
        if p.startswith("llama.cpp") and _cache_of(o) == _cache_of(p)
    ]
    for o, p in pairs:
        ours, peer = c[o], c[p]
        lines += ["", f"| depth | prefill (chunk) {o} / {p} | decode {o} / {p} |"]
        lines.append("|---|---|---|")
        for d in sorted(set(ours) & set(peer)):
            pr = np.mean(ours[d]["prefill_chunk_tok_s"]) / np.mean(peer[d]["prefill_chunk_tok_s"])
            de = np.mean(ours[d]["decode_tok_s"]) / np.mean(peer[d]["decode_tok_s"])
            lines.append(f"| {d} | {pr:.2f}x | {de:.2f}x |")
    kinds = [kv for kv, _ in STATE_KINDS if all(kv in s for s in record["state_memory"])]
    lines += [
        "",
        "| context | " + " | ".join(f"state {dict(STATE_KINDS)[kv]} MiB" for kv in kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for s in record["state_memory"]:
        cells = " | ".join(f"{s[kv] / 2**20:.1f}" for kv in kinds)
        lines.append(f"| {s['context']} | {cells} |")
    return "\n".join(lines)


def merged(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Several walks as one record: their runs together (an engine's samples pooled), the
    first's config and state memory (the state depends on the shape, not on the walk)."""
    out = dict(records[0])
    out["runs"] = [r for rec in records for r in rec["runs"]]
    return out


def cmd_plot(a: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record = merged([json.loads(Path(j).read_text()) for j in a.json])
    c = curves(record)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for label, by_depth in c.items():
        ds = sorted(by_depth)
        for ax, key in ((axes[0], "prefill_chunk_tok_s"), (axes[1], "decode_tok_s")):
            ax.plot(ds, [np.mean(by_depth[d][key]) for d in ds], marker="o", label=label)
    for ax, title in ((axes[0], "prefill tok/s (chunk at depth)"), (axes[1], "decode tok/s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context depth (tokens)")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    sm = record["state_memory"]
    for kv, name in STATE_KINDS:
        if not all(kv in s for s in sm):
            continue
        axes[2].plot(
            [s["context"] for s in sm], [s[kv] / 2**20 for s in sm], marker="o", label=name
        )
    axes[2].set_xscale("log", base=2)
    axes[2].set_yscale("log")
    axes[2].set_xlabel("context (tokens)")
    axes[2].set_title("qwen-edge state MiB, 0.8B shape")
    axes[2].grid(alpha=0.3)
    axes[2].legend()
    fig.suptitle(f"0.8B q4, {record['config']['threads']} threads: cost against context")
    fig.tight_layout()
    fig.savefig(a.png, dpi=110)
    if a.markdown:
        Path(a.markdown).write_text(markdown(record) + "\n")
    print(markdown(record))
    return 0


def cmd_attention(a: argparse.Namespace) -> int:
    """The attention kernel alone at each depth: one decode step's 4 query heads of a GQA group
    over one KV head of 256 positions wide, f16 cache (the binding of the int8 kernel
    quantizes its input first, so it is not timed); x 12 (6 layers x 2 KV heads) is what a
    0.8B decode step spends in attention. No prefill needed, so it reaches 256k. With
    --prefill-chunk N also a prefill chunk's: N consecutive tokens at that depth in one call
    (causal, the kernels share each K/V read among several tokens), per token. Times are the
    calling thread's CPU time (the kernel runs in it), best of --repetitions: wall time on a
    shared machine counts the neighbours' slices too."""
    from qwen_edge.backends.native import core

    _core = core()
    rng = np.random.default_rng(0)
    q = rng.standard_normal((4, 256)).astype(np.float32)
    rows = []
    for depth in _depths(a):
        # K and V distinct, as in a cache: one array for both would read half the bytes.
        k = rng.standard_normal((depth, 256)).astype(np.float16)
        v = rng.standard_normal((depth, 256)).astype(np.float16)
        row: dict[str, Any] = {"depth": depth}
        best = float("inf")
        for _ in range(a.repetitions):
            start = time.thread_time()
            _core.attention(q, k.view(np.uint16), v.view(np.uint16), 0.0625)
            best = min(best, time.thread_time() - start)
        row["f16_s"] = best
        if a.prefill_chunk > 0:
            n_t = a.prefill_chunk
            qt = rng.standard_normal((n_t, 4, 256)).astype(np.float32)
            kt = np.concatenate([k, rng.standard_normal((n_t, 256)).astype(np.float16)])
            vt = np.concatenate([v, rng.standard_normal((n_t, 256)).astype(np.float16)])
            best = float("inf")
            for _ in range(a.repetitions):
                start = time.thread_time()
                _core.attention(qt, kt.view(np.uint16), vt.view(np.uint16), 0.0625)
                best = min(best, time.thread_time() - start)
            row["prefill_f16_s_per_token"] = best / n_t
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"isa": _core.available_isas()[0], "rows": rows}) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="measure, engines alternating")
    p.add_argument("--qwen-edge", help="a .qe file")
    p.add_argument("--llama", help="a GGUF file of the same checkpoint")
    p.add_argument("--peers-python", default=PEERS_PYTHON, help="python with llama_cpp")
    p.add_argument("--depths", default="1024,4096,16384")
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--decode", type=int, default=16, help="tokens per decode probe")
    p.add_argument(
        "--probes", type=int, default=3, help="decode probes per depth, engines taking turns"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--kv-cache",
        default="f16",
        help="the KV cache: f16, q8 or q4 (llama.cpp's q8_0 and q4_0 for them)",
    )
    p.add_argument(
        "--llama-flash-attn",
        choices=("on", "off"),
        default="off",
        help="llama.cpp's flash attention (off: its faster setting for decode at depth here)",
    )
    p.add_argument("--repetitions", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--timeout", type=float, default=3600, help="seconds per repetition (keeps what it has)"
    )
    p.add_argument("--json")
    p.add_argument("--append", action="store_true", help="add these runs to --json's")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("plot", help="tables and a PNG from a run's JSON")
    p.add_argument(
        "--json", required=True, nargs="+", help="one or more runs' records (their runs pooled)"
    )
    p.add_argument("--png", required=True)
    p.add_argument("--markdown")
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser("attention", help="the attention kernel alone against depth")
    p.add_argument("--depths", default="1024,4096,16384,65536,262144")
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument(
        "--prefill-chunk", type=int, default=128, help="tokens of the prefill timing (0: none)"
    )
    p.add_argument("--json")
    p.set_defaults(func=cmd_attention)
    p = sub.add_parser("worker", help=argparse.SUPPRESS)
    p.add_argument("--engine", choices=sorted(WORKERS), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--depths", required=True)
    p.add_argument("--chunk", type=int, required=True)
    p.add_argument("--decode", type=int, required=True)
    p.add_argument("--probes", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kv-cache", default="f16")
    p.add_argument("--llama-flash-attn", choices=("on", "off"), default="off")
    p.set_defaults(func=cmd_worker)
    a = parser.parse_args(argv)
    return int(a.func(a))


if __name__ == "__main__":
    sys.exit(main())
