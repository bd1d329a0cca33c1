#!/usr/bin/env python3
"""Which HTTP stack should `qwen-edge serve` run on? Measures the standard-library transport
(`qwen_edge.serving.server`) against uvicorn + starlette driving the very same `App` and
scheduler, under the same load, alternating the two in one run (the machine is shared and noisy).

Workloads, each with 50 concurrent clients and a new connection per request:

* `models`: GET /v1/models — the stack's own cost per request;
* `stream-stub`: streamed chat answers of 16 tokens from a stub model that answers at once —
  the stack's cost per server-sent event, with the model out of the way;
* `stream-model`: streamed chat answers of 8 tokens from a real model file (`--model`), one
  generation at a time (the scheduler with `max_batch=1`, as when the stack was chosen).

For each: requests/s, p50/p95 latency, connection errors (resets, refusals), and the server's
peak RSS and thread count. Writes JSON (`--out`) and prints a table.

    pip install uvicorn starlette   # only for this comparison
    python tools/bench_http_stack.py --model /work/models/tiny-q4.qe --out bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hello"}], "temperature": 0}


# --- the servers (run as `bench_http_stack.py server ...` in a subprocess) ----------------------
@dataclass(frozen=True)
class _Stats:
    num_prompt_tokens: int = 5
    num_cached_tokens: int = 0
    num_generated_tokens: int = 0


class StubLLM:
    """Answers every prompt at once with `n` one-word tokens: the model out of the way."""

    context = 4096
    tokenizer = None
    model = None  # no forward passes: the scheduler's steps never run

    def with_model(self, model: Any) -> StubLLM:
        return self

    def __init__(self, n: int = 16):
        from qwen_edge.generation.settings import GenerationConfig

        self.n = n
        self.generation_config = GenerationConfig()

    def chat(self, *args: Any, max_tokens: int | None = None, **kwargs: Any) -> Any:
        from qwen_edge.generation.loop import GenerationResponse

        n = max_tokens or self.n
        for i in range(n):
            done = i == n - 1
            yield GenerationResponse(
                " word",
                i,
                None,
                "length" if done else None,
                None,
                _Stats(num_generated_tokens=i + 1),
            )  # type: ignore[arg-type]

    generate = chat


def asgi_app(app: Any) -> Any:
    """The gateway's `App` behind starlette: the same checks and answers, run in threads."""
    from anyio import to_thread
    from starlette.applications import Starlette
    from starlette.requests import Request as StarletteRequest
    from starlette.responses import Response as StarletteResponse
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    from qwen_edge.serving.app import Request
    from qwen_edge.serving.openai_api import MAX_BODY_BYTES, APIError

    async def endpoint(r: StarletteRequest) -> StarletteResponse:
        headers = {k.lower(): v for k, v in r.headers.items()}
        request = Request(r.method, r.url.path, headers, client=r.client.host if r.client else "")
        early = await to_thread.run_sync(app.check, request)
        if early is None:
            body = await r.body()
            if len(body) > MAX_BODY_BYTES:
                early = app.error(request, APIError(413, "request body too large"))
            request.body = body
        response = early or await to_thread.run_sync(app.handle, request)
        if response.stream is None:
            return StarletteResponse(response.body, response.status, response.headers)
        chunks = response.stream

        async def body_iterator() -> Any:
            try:
                while True:
                    chunk = await to_thread.run_sync(next, chunks, None)
                    if chunk is None:
                        return
                    yield chunk
            finally:
                request.disconnect()
                await to_thread.run_sync(chunks.close)

        return StreamingResponse(body_iterator(), response.status, response.headers)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> Any:
        to_thread.current_default_thread_limiter().total_tokens = 256  # as many as connections
        yield

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    routes = [Route("/{path:path}", endpoint, methods=methods)]
    return Starlette(routes=routes, lifespan=lifespan)


def run_server(stack: str, model: str, port: int) -> None:
    from qwen_edge.serving.app import App
    from qwen_edge.serving.scheduler import Scheduler
    from qwen_edge.serving.server import Server

    if model == "stub":
        llm: Any = StubLLM()
    else:
        from qwen_edge.generation.llm import load

        llm = load(model, context=512, threads=1)
    # one sequence at a time, as when the stacks were chosen; the load, not the queue bound, is
    # measured
    worker = Scheduler(llm, max_batch=1, max_queue=1000)
    app = App(worker, llm, "m")
    if stack == "stdlib":
        server = Server(("127.0.0.1", port), app, read_timeout=30, max_connections=256)
        signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=server.shutdown).start())
        print("ready", flush=True)
        server.serve_forever()
        server.server_close()
    else:
        import uvicorn

        print("ready", flush=True)
        uvicorn.run(asgi_app(app), host="127.0.0.1", port=port, log_level="warning",
                    backlog=1024, timeout_keep_alive=30)  # fmt: skip
        worker.close()


# --- the load ----------------------------------------------------------------------------------
def one_request(port: int, workload: str) -> tuple[float, str | None]:
    t0 = time.perf_counter()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        if workload == "models":
            conn.request("GET", "/v1/models")
        else:
            tokens = 16 if workload == "stream-stub" else 8
            conn.request("POST", "/v1/chat/completions",
                         json.dumps({**CHAT, "max_tokens": tokens, "stream": True}))  # fmt: skip
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if resp.status != 200 or (workload != "models" and not data.endswith(b"[DONE]\n\n")):
            return time.perf_counter() - t0, f"status {resp.status}"
    except (OSError, http.client.HTTPException) as e:
        return time.perf_counter() - t0, type(e).__name__
    return time.perf_counter() - t0, None


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server so far (other load on the machine barely moves it)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_memory(pid: int) -> tuple[float, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return peak, threads


def measure(stack: str, model: str, workload: str, total: int, port: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "server", stack, model, str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while one_request(port, "models")[1] is not None:  # listening?
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        idle_rss, _ = server_memory(proc.pid)
        peak_threads = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak_threads
            while not stop.wait(0.05):
                peak_threads = max(peak_threads, server_memory(proc.pid)[1])

        sampler = threading.Thread(target=sample)
        sampler.start()
        cpu0 = server_cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(lambda _: one_request(port, workload), range(total)))
        elapsed = time.perf_counter() - t0
        cpu = server_cpu_seconds(proc.pid) - cpu0
        stop.set()
        sampler.join()
        peak_rss, _ = server_memory(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    latencies = sorted(t for t, err in results if err is None)
    errors = [err for _, err in results if err is not None]
    return {
        "stack": stack,
        "workload": workload,
        "requests": total,
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1)
        if latencies
        else None,
        "server_cpu_ms_per_request": round(1000 * cpu / total, 2),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "idle_rss_mb": round(idle_rss, 1),
        "peak_rss_mb": round(peak_rss, 1),
        "peak_threads": peak_threads,
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "server":
        run_server(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a model file for the stream-model workload")
    p.add_argument("--rounds", type=int, default=4, help="alternations of the two stacks")
    p.add_argument("--port", type=int, default=18431)
    p.add_argument("--out", type=Path, help="write the results as JSON")
    args = p.parse_args()
    workloads = [("models", "stub", 1000), ("stream-stub", "stub", 500)]
    if args.model:
        workloads.append(("stream-model", args.model, 50))
    rows = []
    for workload, model, total in workloads:
        for r in range(args.rounds):
            for stack in ("stdlib", "asgi") if r % 2 == 0 else ("asgi", "stdlib"):
                row = measure(stack, model, workload, total, args.port)
                row["round"] = r
                rows.append(row)
                print(json.dumps(row), flush=True)
    import starlette
    import uvicorn

    record = {
        "command": "python " + " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "uvicorn": uvicorn.__version__, "starlette": starlette.__version__},
        "concurrency": 50,
        "rows": rows,
    }  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\nmedians over {args.rounds} rounds:")
    print(f"{'workload':14} {'stack':7} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'CPU ms/req':>10} {'errors':>6} {'peak RSS MB':>11} {'threads':>7}")  # fmt: skip
    for workload, _, _ in workloads:
        for stack in ("stdlib", "asgi"):
            mine = [r for r in rows if r["workload"] == workload and r["stack"] == stack]

            def med(key: str, mine: list[dict[str, Any]] = mine) -> Any:
                return round(statistics.median(r[key] for r in mine), 1)

            errors = sum(r["errors"] for r in mine)
            print(f"{workload:14} {stack:7} {med('requests_per_s'):7} {med('p50_ms'):8} "
                  f"{med('p95_ms'):8} {med('server_cpu_ms_per_request'):10} {errors:6} "
                  f"{med('peak_rss_mb'):11} {med('peak_threads'):7}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
