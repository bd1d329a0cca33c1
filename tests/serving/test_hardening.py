"""The server under hostile or heavy use: API keys, a full queue, clients that leave or stall,
50-way concurrency, connection caps, /metrics as Prometheus parses it, real `openai` clients."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from serving_util import CHAT, NO_END, Addr, call, request

from qwen_edge.serving.server import Server

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def post(path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n"
    return head.encode() + data


class Gate:
    """The real model, with every forward pass waiting for `release` (so a test decides when
    generations progress). `gated(llm)` is the LLM over it, for `make_server(wrap=...)`."""

    def __init__(self, model: Any):
        self.model = model
        self.release = threading.Event()
        self.reached = threading.Event()  # a forward pass is waiting (or went through)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.reached.set()
        self.release.wait()
        return self.model.forward(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "forward_batch":  # one by one, each through the gate
            raise AttributeError(name)
        return getattr(self.model, name)


def gated(gates: list[Gate]) -> Callable[[Any], Any]:
    def wrap(llm: Any) -> Any:
        gates.append(Gate(llm.model))
        return llm.with_model(gates[-1])

    return wrap


# --- API keys -----------------------------------------------------------------------------------
def test_api_key(make_server: Callable[..., Server]) -> None:
    addr = make_server(api_key=KEY).server_address[:2]
    for path in ("/health", "/health/ready"):  # the probes stay open
        assert request(addr, "GET", path)[0] == 200
    wrong = [{}, {"Authorization": "Bearer nope"}, {"Authorization": KEY},
             {"Authorization": f"Basic {KEY}"}, {"Authorization": f"Bearer {KEY}x"}]  # fmt: skip
    routes = [("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/nowhere"),
              ("POST", "/v1/chat/completions"), ("POST", "/v1/completions")]  # fmt: skip
    for method, path in routes:
        for headers in wrong:
            status, body, resp = call(addr, method, path, CHAT, headers=headers)
            assert status == 401, (method, path, headers)
            assert body["error"]["code"] == "invalid_api_key"
            assert resp.getheader("WWW-Authenticate") == "Bearer"
    assert request(addr, "GET", "/v1/models", headers=AUTH)[0] == 200
    assert request(addr, "GET", "/v1/models", headers={"Authorization": f"bearer  {KEY}"})[0] == 200
    status, out = request(addr, "POST", "/v1/chat/completions", CHAT, headers=AUTH)
    assert status == 200 and out["choices"][0]["message"]["role"] == "assistant"


# --- a full queue -------------------------------------------------------------------------------
def test_full_queue_answers_429_with_retry_after(make_server: Callable[..., Server]) -> None:
    gates: list[Gate] = []
    srv = make_server(wrap=gated(gates), max_queue=1, max_batch=1)
    addr, worker = srv.server_address[:2], srv.worker
    results: list[tuple[int, Any]] = []

    def ask() -> None:
        results.append(request(addr, "POST", "/v1/chat/completions", CHAT))

    first = threading.Thread(target=ask)
    first.start()
    wait_for(lambda: worker.active == 1, "the first request to run")
    second = threading.Thread(target=ask)
    second.start()
    wait_for(lambda: worker.queue_depth == 1, "the second request to wait")
    status, body, resp = call(addr, "POST", "/v1/chat/completions", CHAT)
    assert status == 429 and body["error"]["code"] == "queue_full"
    assert int(resp.getheader("Retry-After")) >= 1
    status, _, resp = call(addr, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})
    assert status == 429 and resp.getheader("Retry-After")
    assert request(addr, "GET", "/health")[0] == 200  # probes never queue
    gates[0].release.set()
    first.join()
    second.join()
    assert [r[0] for r in results] == [200, 200]
    assert request(addr, "POST", "/v1/chat/completions", CHAT)[0] == 200  # room again


# --- clients that leave -------------------------------------------------------------------------
def test_non_streaming_request_stops_when_its_client_leaves(
    make_server: Callable[..., Server],
) -> None:
    gates: list[Gate] = []
    srv = make_server(wrap=gated(gates))
    addr, worker = srv.server_address[:2], srv.worker
    body = {**CHAT, "max_tokens": 250, "temperature": 1.0, "logit_bias": NO_END}
    with socket.create_connection(addr, timeout=30) as s:
        s.sendall(post("/v1/chat/completions", body))
        wait_for(gates[0].reached.is_set, "the generation's first step")
        jobs = [slot.job for slot in worker._running.values()]
    # held at its first step until the watch has seen the client leave: ungated, a fast
    # machine could finish all 250 tokens first
    wait_for(lambda: all(job.cancelled.is_set() for job in jobs), "the disconnect to be seen")
    gates[0].release.set()
    # the worker stops it at its next token instead of generating 250 tokens for nobody
    wait_for(lambda: worker.cancelled_jobs == 1, "the generation to be cancelled")
    wait_for(lambda: worker.active == 0, "the worker to be free")
    assert request(addr, "POST", "/v1/chat/completions", CHAT)[0] == 200
    metrics = request(addr, "GET", "/metrics")[1]
    assert 'requests_total{route="/v1/chat/completions",status="499"} 1' in metrics


def test_queued_request_of_a_client_that_left_never_runs(
    make_server: Callable[..., Server],
) -> None:
    gates: list[Gate] = []
    srv = make_server(wrap=gated(gates), max_batch=1)
    addr, worker = srv.server_address[:2], srv.worker
    first = threading.Thread(target=request, args=(addr, "POST", "/v1/chat/completions", CHAT))
    first.start()
    wait_for(lambda: worker.active == 1, "the first request to run")
    with socket.create_connection(addr, timeout=30) as s:
        s.sendall(post("/v1/chat/completions", CHAT))
        wait_for(lambda: worker.queue_depth == 1, "the second request to wait")
        queued = list(worker._queue)
    wait_for(lambda: queued[0].cancelled.is_set(), "the watch to see the client leave")
    gates[0].release.set()
    first.join()
    wait_for(lambda: worker.queue_depth == 0 and worker.active == 0, "the queue to empty")
    stats = worker.stats()
    assert stats["completion_tokens"] == 8  # only the first request generated anything


# --- clients that stall -------------------------------------------------------------------------
def test_stalled_clients_are_timed_out_and_block_no_one(
    make_server: Callable[..., Server],
) -> None:
    srv = make_server(read_timeout=1.0)
    addr = srv.server_address[:2]
    half_head = socket.create_connection(addr, timeout=30)
    half_head.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
    half_body = socket.create_connection(addr, timeout=30)
    half_body.sendall(post("/v1/chat/completions", CHAT)[:-10])
    idle = socket.create_connection(addr, timeout=30)  # connects, sends nothing
    trickle = socket.create_connection(addr, timeout=30)
    t0 = time.monotonic()
    # meanwhile everyone else is served
    assert request(addr, "GET", "/health")[0] == 200
    assert request(addr, "POST", "/v1/chat/completions", CHAT)[0] == 200
    # a slowloris sending a byte at a time within each read's timeout is still cut off
    closed_at = None
    for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 100:
        try:
            trickle.sendall(bytes([byte]))
        except OSError:
            closed_at = time.monotonic()
            break
        time.sleep(0.2)
        if time.monotonic() - t0 > 15:
            break
    assert closed_at is not None and closed_at - t0 < 10, "the slow client was not cut off"
    for s in (half_head, idle):
        assert read_all(s) == b""  # closed by the server, no answer to a request never made
    reply = read_all(half_body)
    assert reply.startswith(b"HTTP/1.1 408 ") and b'"error"' in reply
    for s in (half_head, half_body, idle, trickle):
        s.close()


def test_connections_over_the_cap_get_503(make_server: Callable[..., Server]) -> None:
    srv = make_server(max_connections=2, read_timeout=5.0)
    addr = srv.server_address[:2]
    held = [socket.create_connection(addr, timeout=30) for _ in range(2)]
    wait_for(lambda: srv.open_connections == 2, "two connections to be served")
    with socket.create_connection(addr, timeout=30) as s:
        reply = read_all(s)
    assert reply.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in reply
    for s in held:
        s.close()
    wait_for(lambda: srv.open_connections == 0, "the held connections to close")
    assert request(addr, "GET", "/health")[0] == 200


# --- many clients at once -----------------------------------------------------------------------
def test_fifty_concurrent_connections_without_resets(server: Addr) -> None:
    """350 connections, 50 at a time (the listen backlog of 5 this server once had reset 61)."""

    def one(_: int) -> int:
        return request(server, "GET", "/v1/models")[0]

    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(one, range(350)))
    assert statuses == [200] * 350


def test_concurrent_openai_clients(make_server: Callable[..., Server]) -> None:
    openai = pytest.importorskip("openai", reason="needs openai (the test extra)")
    srv = make_server(api_key=KEY)
    base_url = "http://{}:{}/v1".format(*srv.server_address[:2])
    messages = CHAT["messages"]

    def client(i: int) -> tuple[str, str, str | None]:
        c = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=120)
        whole = c.chat.completions.create(model="tiny", messages=messages, max_tokens=4,
                                          temperature=0)  # fmt: skip
        stream = c.chat.completions.create(model="tiny", messages=messages, max_tokens=4,
                                           temperature=0, stream=True)  # fmt: skip
        pieces, finish = [], None
        for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        return whole.choices[0].message.content or "", "".join(pieces), finish

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(client, range(4)))
    assert len({a[0] for a in answers}) == 1  # greedy: every client the same answer
    assert all(whole == streamed and finish in ("stop", "length") for whole, streamed, finish
               in answers)  # fmt: skip
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()


# --- metrics ------------------------------------------------------------------------------------
def test_metrics_parse_as_prometheus_text(make_server: Callable[..., Server]) -> None:
    parser = pytest.importorskip("prometheus_client.parser", reason="needs prometheus-client")
    srv = make_server()
    addr = srv.server_address[:2]
    assert request(addr, "POST", "/v1/chat/completions", CHAT)[0] == 200
    assert request(addr, "POST", "/v1/chat/completions", {**CHAT, "stream": True})[0] == 200
    assert request(addr, "POST", "/v1/chat/completions", {**CHAT, "n": 2})[0] == 400
    status, text, resp = call(addr, "GET", "/metrics")
    assert status == 200 and resp.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}  # fmt: skip

    def value(name: str, **labels: str) -> float:
        return samples[("qwen_edge_" + name, tuple(sorted(labels.items())))]

    route = "/v1/chat/completions"
    assert value("requests_total", route=route, status="200") == 2
    assert value("requests_total", route=route, status="400") == 1
    assert value("completion_tokens_total") == 16 and value("prompt_tokens_total") > 10
    assert value("time_to_first_token_seconds_count") == 2
    assert value("inter_token_latency_seconds_count") == 14  # 7 gaps in each 8-token answer
    assert value("time_to_first_token_seconds_bucket", le="+Inf") == 2
    assert value("queue_depth") == 0 and value("ready") == 1 and value("max_batch") == 4
    for name in ("prefix_cache_hits", "prefix_cache_tokens", "batch_occupancy",
                 "active_sequences", "request_duration_seconds"):  # fmt: skip
        assert "qwen_edge_" + name in families
    # the second request reused the first one's system/user prefix snapshot
    assert value("prefix_cache_hits_total") >= 1
    # histograms stay cumulative across scrapes
    again = request(addr, "GET", "/metrics")[1]
    assert "qwen_edge_time_to_first_token_seconds_count 2" in again


def test_request_log_lines_are_json(server: Addr, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="qwen_edge.serving.access"):
        request(server, "POST", "/v1/chat/completions", CHAT, headers={"X-Request-Id": "abc-1"})
        request(server, "POST", "/v1/chat/completions", {**CHAT, "stream": True})
    lines = [json.loads(r.getMessage()) for r in caplog.records
             if r.name == "qwen_edge.serving.access"]  # fmt: skip
    assert [line["status"] for line in lines] == [200, 200]
    first, second = lines
    assert first["id"] == "abc-1" and second["id"].startswith("chatcmpl-")
    assert first["stream"] is False and second["stream"] is True
    for line in lines:
        assert line["path"] == "/v1/chat/completions" and line["completion_tokens"] == 8
        assert line["duration_s"] >= line["ttft_s"] > 0 and line["prompt_tokens"] > 5
