#!/usr/bin/env python3
"""`qwen-edge serve` against llama.cpp's `llama-server` under concurrent streams, in one run.

Both servers run the same checkpoint (our q4 model file and its Q4_0 GGUF) with the same
threads and the same number of parallel sequences (`--max-batch N` / `-np N`, both continuous
batching). For each load (1, 2, 4, 8 concurrent streams by default) the engines take turns,
the order swapping every repetition, so a machine-wide slowdown hits both alike. Each stream
is one streaming `/v1/completions` request through the real `openai` client, generating
exactly `--max-tokens` tokens (the end tokens are masked by `logit_bias`, and llama-server
also gets `ignore_eos`, since random weights may sample them).

Measured per engine and load: aggregate tokens/s (all streams' tokens over the wall time from
the first request to the last token), aggregate decode tokens/s (tokens after each stream's
first, over the time from the first first-token to the last token), time to first token p50 /
p95, the spread of the streams' first tokens (last minus first), inter-token latency p50 and p95
(the p50 ratio to one stream's gives the steady decode rate, free of the spread). Then the time
to first token of a chat request whose ~1,000-token system prompt is cached (a second request
with the same system prompt and another question) against uncached (a new system prompt of the
same length). Then admission: `--parallel` - 1 streams decode, and once each has a few tokens a
new request with a ~1,000-token prompt joins (so the batch holds `--parallel` sequences); the
running streams' inter-token latency p95 while it is prefilled (from its sending to its first
token) against before it, and the joining request's time to first token. The machine's load
average is recorded before and after every run (the engines share the machine with whatever else
runs).

    python tools/bench_serving.py --qwen-edge M.qe --gguf M-Q4_0.gguf \\
        --llama-server PATH/llama-server [--llama-lib DIR] --threads 2 --streams 1,2,4,8 \\
        --json out.json --markdown out.md

Needs the `openai` package (the `test` extra) and a llama-server binary (docs/serving.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

END_TOKENS = {"248044": -100, "248046": -100}  # <|endoftext|>, <|im_end|>
WORDS = [
    "gateway",
    "sensor",
    "battery",
    "kitchen",
    "window",
    "garden",
    "morning",
    "signal",
    "river",
    "engine",
    "market",
    "station",
    "evening",
    "weather",
    "report",
    "summary",
    "device",
    "network",
    "message",
    "schedule",
    "pattern",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Engine:
    """One server process: started once, asked through the `openai` client."""

    def __init__(self, name: str, argv: list[str], port: int, env: dict[str, str] | None = None):
        self.name, self.port = name, port
        self.log = open(f"/tmp/bench_serving_{name}_{port}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def wait_ready(self, timeout: float = 600) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not become ready in {timeout} s")

    def client(self) -> Any:
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key="none", max_retries=0, timeout=600)

    def extra(self) -> dict[str, Any]:
        body: dict[str, Any] = {"logit_bias": END_TOKENS}
        if self.name == "llama-server":
            body["ignore_eos"] = True
        return body

    def stop(self) -> None:
        if self.proc.poll() is not None:
            self.log.close()
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def one_stream(engine: Engine, prompt: str, max_tokens: int, start: float) -> dict[str, Any]:
    """One streaming completion: the arrival times of its tokens (chunks with text)."""
    client = engine.client()
    sent = time.perf_counter()
    stream = client.completions.create(
        model="m", prompt=prompt, max_tokens=max_tokens, temperature=0.0, stream=True,
        stream_options={"include_usage": True}, extra_body=engine.extra(),
    )  # fmt: skip
    times, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            times.append(time.perf_counter())
        if getattr(chunk, "usage", None):
            usage = chunk.usage.completion_tokens
    return {"sent": sent - start, "times": [t - start for t in times], "tokens": usage}


def run_load(engine: Engine, streams: int, max_tokens: int, seed: int) -> dict[str, Any]:
    prompts = [
        " ".join(WORDS[(seed + 7 * i + j) % len(WORDS)] for j in range(24)) for i in range(streams)
    ]
    results: list[dict[str, Any]] = [{} for _ in range(streams)]
    start = time.perf_counter()

    def go(i: int) -> None:
        results[i] = one_stream(engine, prompts[i], max_tokens, start)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = max(r["times"][-1] for r in results)
    tokens = sum(r["tokens"] or len(r["times"]) for r in results)
    ttft = [r["times"][0] - r["sent"] for r in results]
    itl = [b - a for r in results for a, b in itertools.pairwise(r["times"])]
    first = min(r["times"][0] for r in results)
    decode_tokens = tokens - streams
    # the streams' first tokens: "aggregate decode" counts from the first, so a spread between
    # them (prompts admitted one after another) lowers it though the steady steps do not change
    spread = max(r["times"][0] for r in results) - first
    return {
        "engine": engine.name,
        "streams": streams,
        "tokens": tokens,
        "wall_s": end,
        "aggregate_tok_s": tokens / end,
        "aggregate_decode_tok_s": decode_tokens / (end - first) if end > first else 0.0,
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p95_s": percentile(ttft, 95),
        "first_token_spread_s": spread,
        "itl_p50_s": percentile(itl, 50),
        "itl_p95_s": percentile(itl, 95),
    }


def system_prompt(words: int, salt: int) -> str:
    return " ".join(WORDS[(salt * 13 + 5 * i + i // 7) % len(WORDS)] for i in range(words))


def chat_ttft(engine: Engine, system: str, question: str) -> dict[str, Any]:
    client = engine.client()
    start = time.perf_counter()
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "system", "content": system},
                             {"role": "user", "content": question}],
        max_tokens=4, temperature=0.0, stream=True, stream_options={"include_usage": True},
        extra_body=engine.extra(),
    )  # fmt: skip
    first, prompt_tokens = None, None
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if getattr(chunk, "usage", None):
            prompt_tokens = chunk.usage.prompt_tokens
    return {"ttft_s": first, "prompt_tokens": prompt_tokens}


def run_cached(engine: Engine, words: int, salt: int) -> dict[str, Any]:
    """TTFT of a new ~1,000-token system prompt, then of the same one with another question."""
    system = system_prompt(words, salt)
    cold = chat_ttft(engine, system, "What should I check first?")
    warm = chat_ttft(engine, system, "And what after that?")
    return {
        "engine": engine.name,
        "prompt_tokens": cold["prompt_tokens"],
        "uncached_ttft_s": cold["ttft_s"],
        "cached_ttft_s": warm["ttft_s"],
        "speedup": cold["ttft_s"] / warm["ttft_s"] if warm["ttft_s"] else float("nan"),
    }


def run_admission(engine: Engine, streams: int, words: int, salt: int) -> dict[str, Any]:
    """`streams` decode; when each has 8 tokens a request with a `words`-word prompt joins.
    The streams' inter-token latency before it and while it is prefilled."""
    prompts = [" ".join(WORDS[(salt + 3 * i + j) % len(WORDS)] for j in range(24))
               for i in range(streams)]  # fmt: skip
    times: list[list[float]] = [[] for _ in range(streams)]
    stop = threading.Event()
    start = time.perf_counter()

    def go(i: int) -> None:
        stream = engine.client().completions.create(
            model="m", prompt=prompts[i], max_tokens=1500, temperature=0.0, stream=True,
            extra_body=engine.extra(),
        )  # fmt: skip
        try:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].text:
                    times[i].append(time.perf_counter() - start)
                if stop.is_set():
                    break
        finally:
            stream.close()  # the server cancels the rest

    threads = [threading.Thread(target=go, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    while min(len(t) for t in times) < 8 and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    sent = time.perf_counter() - start
    joined = one_stream(engine, system_prompt(words, salt + 50), 1, start)
    admitted = joined["times"][0]
    stop.set()
    for t in threads:
        t.join()
    pairs = [(a, b) for ts in times for a, b in itertools.pairwise(ts)]
    before = [b - a for a, b in pairs if b <= sent]
    during = [b - a for a, b in pairs if sent < b <= admitted]
    # a stream whose next token came only after the admission waited at least until then
    during += [admitted - ts[-1] for ts in times if ts and sent < ts[-1] <= admitted]
    return {
        "engine": engine.name,
        "streams": streams,
        "prompt_words": words,
        "admit_ttft_s": admitted - sent,
        "itl_p95_before_s": percentile(before, 95),
        "itl_p95_during_s": percentile(during, 95),
        "itl_max_during_s": max(during) if during else float("nan"),
        "tokens_during": len(during),
    }


def markdown(report: dict[str, Any]) -> str:
    rows = report["loads"]
    engines = sorted({r["engine"] for r in rows}, key=lambda e: e != "qwen-edge")  # ours first
    levels = sorted({r["streams"] for r in rows})

    def best(engine: str, streams: int, key: str) -> float:
        values = [r[key] for r in rows if r["engine"] == engine and r["streams"] == streams]
        return float(statistics.median(values))

    out = [
        f"{report['machine']}; {report['threads']} threads; {report['max_tokens']} tokens per "
        f"stream; medians of {report['repetitions']} repetitions, engines alternating.",
        "",
        "| streams | engine | aggregate tok/s | aggregate decode tok/s | TTFT p50 s | TTFT p95 s "
        "| ITL p95 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in levels:
        for e in engines:
            out.append(
                f"| {n} | {e} | {best(e, n, 'aggregate_tok_s'):.1f} "
                f"| {best(e, n, 'aggregate_decode_tok_s'):.1f} | {best(e, n, 'ttft_p50_s'):.2f} "
                f"| {best(e, n, 'ttft_p95_s'):.2f} | {1000 * best(e, n, 'itl_p95_s'):.0f} |"
            )
    if len(engines) == 2:
        a, b = engines
        out += ["", f"| streams | {a} / {b} aggregate tok/s | {a} vs its 1 stream "
                    f"(aggregate / decode / ITL p95) | {b} vs its 1 stream (same) |",
                "|---|---|---|---|"]  # fmt: skip

        def vs1(e: str, n: int) -> str:
            return (
                f"{best(e, n, 'aggregate_tok_s') / best(e, 1, 'aggregate_tok_s'):.2f}x / "
                f"{best(e, n, 'aggregate_decode_tok_s') / best(e, 1, 'aggregate_decode_tok_s'):.2f}"
                f"x / {best(e, n, 'itl_p95_s') / best(e, 1, 'itl_p95_s'):.2f}x"
            )

        for n in levels:
            out.append(
                f"| {n} | {best(a, n, 'aggregate_tok_s') / best(b, n, 'aggregate_tok_s'):.2f}x "
                f"| {vs1(a, n)} | {vs1(b, n)} |"
                if 1 in levels
                else f"| {n} | - | - | - |"
            )
    if 1 in levels and all("first_token_spread_s" in r for r in rows):
        out += ["", "| streams | engine | first tokens' spread s | ITL p50 ms "
                    "| steady decode vs its 1 stream (streams x ITL p50 ratio) |",
                "|---|---|---|---|---|"]  # fmt: skip
        for n in levels:
            for e in engines:
                steady = n * best(e, 1, "itl_p50_s") / best(e, n, "itl_p50_s")
                out.append(
                    f"| {n} | {e} | {best(e, n, 'first_token_spread_s'):.2f} "
                    f"| {1000 * best(e, n, 'itl_p50_s'):.1f} | {steady:.2f}x |"
                )
    if report.get("cached"):
        out += ["", "| engine | system prompt tokens | uncached TTFT s | cached TTFT s | speedup |",
                "|---|---|---|---|---|"]  # fmt: skip
        for c in report["cached"]:
            out.append(
                f"| {c['engine']} | {c['prompt_tokens']} | {c['uncached_ttft_s']:.2f} "
                f"| {c['cached_ttft_s']:.3f} | {c['speedup']:.1f}x |"
            )
    if report.get("admission"):
        out += ["", "| engine | streams + 1 joining | prompt words | joining TTFT s | streams' ITL "
                    "p95 before ms | ITL p95 while admitting ms | max ms | vs 1-stream ITL p95 |",
                "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for c in report["admission"]:
            e = c["engine"]
            one = best(e, 1, "itl_p95_s") if 1 in levels and e in engines else float("nan")
            out.append(
                f"| {e} | {c['streams']} + 1 | {c['prompt_words']} | {c['admit_ttft_s']:.2f} "
                f"| {1000 * c['itl_p95_before_s']:.0f} | {1000 * c['itl_p95_during_s']:.0f} "
                f"| {1000 * c['itl_max_during_s']:.0f} | {c['itl_p95_during_s'] / one:.2f}x |"
            )
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--qwen-edge", type=Path, help="our model file (.qe)")
    p.add_argument("--gguf", type=Path, help="the same checkpoint as GGUF (Q4_0)")
    p.add_argument("--llama-server", type=Path, help="the llama-server binary")
    p.add_argument(
        "--prefill-share", type=float,
        help="qwen-edge serve's --prefill-share (default: the server's): a step carrying prompt "
        "tokens beside decoding streams takes at most 1 + this times their decode step",
    )  # fmt: skip
    p.add_argument(
        "--llama-lib", type=Path,
        help="folder of the llama/ggml shared libraries to run it with (default: the binary's; "
        "e.g. an AVX2 build's where the binary's own need AVX-512)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parallel", type=int, default=4, help="sequences batched together")
    p.add_argument("--context", type=int, default=2048, help="tokens per sequence")
    p.add_argument("--streams", default="1,2,4,8")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--repetitions", type=int, default=2)
    p.add_argument("--system-words", type=int, default=1000,
                   help="words of the cached system prompt (about one token each)")  # fmt: skip
    p.add_argument(
        "--cached-engines", default="qwen-edge",
        help="engines whose cached/uncached system prompt is timed (comma list; default ours)",
    )  # fmt: skip
    p.add_argument(
        "--admission", action=argparse.BooleanOptionalAction, default=True,
        help="time the streams' inter-token latency while a long prompt joins (default on)",
    )  # fmt: skip
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    a = p.parse_args()
    if a.qwen_edge is None and a.gguf is None:
        p.error("give --qwen-edge and/or --gguf")
    levels = [int(x) for x in a.streams.split(",")]

    engines: list[Engine] = []
    load_before = os.getloadavg()[0]
    admission: list[dict[str, Any]] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the servers on the way out
    try:
        if a.qwen_edge is not None:
            port = free_port()
            engines.append(Engine("qwen-edge", [
                sys.executable, "-m", "qwen_edge", "serve", str(a.qwen_edge), "--port", str(port),
                "--threads", str(a.threads), "--max-batch", str(a.parallel),
                "--context", str(a.context), "--max-queue", "64",
                *(["--prefill-share", str(a.prefill_share)] if a.prefill_share else []),
            ], port))  # fmt: skip
        if a.gguf is not None:
            if a.llama_server is None:
                p.error("--gguf needs --llama-server")
            port = free_port()
            # OpenMP threads that sleep when idle instead of spinning: on a shared machine
            # spinning threads fight the other processes (and the other engine's server)
            env = {
                **os.environ,
                "LD_LIBRARY_PATH": str(a.llama_lib or a.llama_server.parent),
                "OMP_WAIT_POLICY": "passive",
            }
            engines.append(Engine("llama-server", [
                str(a.llama_server), "-m", str(a.gguf), "-t", str(a.threads), "-tb",
                str(a.threads), "-np", str(a.parallel), "-c", str(a.context * a.parallel),
                "--host", "127.0.0.1", "--port", str(port), "--no-webui",
            ], port, env))  # fmt: skip
        for e in engines:
            e.wait_ready()
            run_load(e, 1, 4, seed=99)  # warm-up: page the weights in
        loads, cached = [], []
        for rep in range(a.repetitions):
            for n in levels:
                order = engines if (rep + n) % 2 == 0 else engines[::-1]
                for e in order:
                    r = {"load_before": os.getloadavg()[0]}
                    r.update(run_load(e, n, a.max_tokens, seed=rep * 100 + n))
                    r["repetition"], r["load_after"] = rep, os.getloadavg()[0]
                    loads.append(r)
                    print(json.dumps(r), file=sys.stderr, flush=True)
        timed = [e for e in engines if e.name in a.cached_engines.split(",")]
        for rep in range(a.repetitions):
            for e in timed if rep % 2 == 0 else timed[::-1]:
                c = run_cached(e, a.system_words, salt=rep + 1)
                c["repetition"] = rep
                cached.append(c)
                print(json.dumps(c), file=sys.stderr, flush=True)
        for rep in range(a.repetitions if a.admission else 0):
            for e in engines if rep % 2 == 0 else engines[::-1]:
                c = {"load_before": os.getloadavg()[0]}
                c.update(run_admission(e, max(1, a.parallel - 1), a.system_words, salt=rep + 7))
                c["repetition"], c["load_after"] = rep, os.getloadavg()[0]
                admission.append(c)
                print(json.dumps(c), file=sys.stderr, flush=True)
    finally:
        for e in engines:
            e.stop()
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, load {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after",
        "threads": a.threads,
        "parallel": a.parallel,
        "max_tokens": a.max_tokens,
        "repetitions": a.repetitions,
        "models": {"qwen-edge": str(a.qwen_edge), "llama-server": str(a.gguf)},
        "loads": loads,
        "cached": cached,
        "admission": admission,
    }
    text = markdown(report)
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    if a.markdown:
        a.markdown.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
