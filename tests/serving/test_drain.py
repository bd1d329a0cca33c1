"""`qwen-edge serve` as a process: SIGTERM drains it (running streams end with a finish_reason
and [DONE], new requests get 503, the probes say so, exit code 0), and so does Ctrl-C, at once."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serving_util import CHAT, NO_END, Addr, call, sse_events


@pytest.fixture
def serve_process(tiny_chat_checkpoint: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start(*flags: str) -> tuple[subprocess.Popen[str], Addr]:
        cmd = [sys.executable, "-m", "qwen_edge", "serve", str(tiny_chat_checkpoint),
               "--port", "0", "--context", "512", "--model-name", "tiny", *flags]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)  # fmt: skip
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "serving tiny on http://127.0.0.1:PORT/v1 ..."
        match = re.search(r"http://([\d.]+):(\d+)/", line)
        assert match, f"no address in {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"
        return proc, (match.group(1), int(match.group(2)))

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


class Stream:
    """A streaming chat request read on a thread; `first` is set at its first event."""

    def __init__(self, addr: Addr, max_tokens: int):
        self.first = threading.Event()
        self.text = ""
        body = {**CHAT, "max_tokens": max_tokens, "temperature": 1.0, "logit_bias": NO_END,
                "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
        self.conn = http.client.HTTPConnection(*addr, timeout=120)
        self.conn.request("POST", "/v1/chat/completions", json.dumps(body))
        self.thread = threading.Thread(target=self._read)
        self.thread.start()

    def _read(self) -> None:
        resp = self.conn.getresponse()
        assert resp.status == 200
        while line := resp.readline():
            self.text += line.decode()
            self.first.set()

    def events(self) -> list[Any]:
        self.thread.join(120)
        return sse_events(self.text)


def metric(addr: Addr, name: str) -> float:
    text = call(addr, "GET", "/metrics")[1]
    return float(re.search(rf"^qwen_edge_{name} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


def wait_for_metric(addr: Addr, name: str, value: float) -> None:
    deadline = time.monotonic() + 60
    while metric(addr, name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.05)


def ending(events: list[Any]) -> tuple[str, int]:
    """The finish reason and the completion tokens of a streamed answer."""
    finishes = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert len(finishes) == 1
    return finishes[0], events[-1]["usage"]["completion_tokens"]


PACED = ("--tokens-per-second", "40", "--power-sensor", "command:echo 5", "--idle-seconds", "0.1")


def test_sigterm_drains(serve_process: Any) -> None:
    # paced to 40 tokens/s so that no machine finishes the long stream within the drain timeout;
    # one sequence at a time, so that the second request waits in the queue
    proc, addr = serve_process("--drain-timeout", "4", "--max-batch", "1", *PACED)
    # finishes within the drain timeout, and runs long enough (0.4 s) for the queue to be seen
    short = Stream(addr, max_tokens=16)
    assert short.first.wait(60)
    long = Stream(addr, max_tokens=400)  # queued behind it; cut by the drain timeout
    wait_for_metric(addr, "queue_depth", 1)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while call(addr, "GET", "/health/ready")[0] != 503:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # while draining: new generations 503, the liveness probe still up, the rest still served
    status, body, resp = call(addr, "POST", "/v1/chat/completions", CHAT)
    assert status == 503 and body["error"]["code"] == "draining" and resp.getheader("Retry-After")
    assert call(addr, "GET", "/health")[:2] == (200, {"status": "draining"})
    assert call(addr, "GET", "/v1/models")[0] == 200
    assert ending(short.events()) == ("length", 16)  # finished on its own: all 16 tokens
    reason, tokens = ending(long.events())  # ended by the drain, properly
    assert reason == "length" and 0 < tokens < 400
    assert proc.wait(60) == 0
    assert time.monotonic() - t0 < 30
    log = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    statuses = [r["status"] for r in log if r["path"] == "/v1/chat/completions"]
    assert statuses.count(200) == 2 and statuses.count(503) == 1


def test_ctrl_c_ends_streams_at_once(serve_process: Any) -> None:
    proc, addr = serve_process("--drain-timeout", "60", *PACED)
    stream = Stream(addr, max_tokens=400)
    assert stream.first.wait(60)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    reason, tokens = ending(stream.events())
    assert reason == "length" and tokens < 400
    assert proc.wait(60) == 0 and time.monotonic() - t0 < 30
    assert "Traceback" not in proc.stderr.read()
