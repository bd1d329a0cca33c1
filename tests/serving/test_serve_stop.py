"""`qwen-edge serve` on a model file stopped by SIGINT or SIGTERM at random moments of streamed
generations: the process exits 0 (no abort: its worker is inside the native core when the
signal comes), and every stream in flight ends with a finish_reason and [DONE]."""

from __future__ import annotations

import http.client
import json
import re
import threading
from pathlib import Path

import pytest
from processes import KILLS, delays, qwen_edge, signal, signal_after, start
from serving_util import CHAT, NO_END

from qwen_edge.export import convert


@pytest.fixture(scope="module")
def chat_model(tiny_chat_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve-stop") / "chat.qe"
    convert.export(tiny_chat_checkpoint, out, "q8")
    return out


def _stream(addr: tuple[str, int], first: threading.Event, texts: list[str]) -> None:
    body = {**CHAT, "max_tokens": 2000, "temperature": 1.0, "logit_bias": NO_END,
            "stream": True}  # fmt: skip
    conn = http.client.HTTPConnection(*addr, timeout=120)
    conn.request("POST", "/v1/chat/completions", json.dumps(body))
    resp = conn.getresponse()
    text = ""
    if resp.status == 200:
        while line := resp.readline():
            text += line.decode()
            first.set()
    else:  # queued behind the first and answered 503 by the stop: a complete answer too
        text = f"status {resp.status}"
    first.set()
    texts.append(text)


def test_serve_stopped_by_signals_mid_stream(chat_model: Path) -> None:
    seed = 31
    for i, delay in enumerate(delays(max(4, KILLS // 2), 0.0, 1.0, seed)):
        signum = signal.SIGINT if i % 2 == 0 else signal.SIGTERM
        proc = start(qwen_edge("serve", chat_model, "--port", "0", "--context", "4096",
                               "--threads", "2", "--drain-timeout", "0.5"))  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"http://([\d.]+):(\d+)/", line)
        assert match, proc.communicate()[1]
        addr = (match.group(1), int(match.group(2)))
        first, texts = threading.Event(), []
        clients = [threading.Thread(target=_stream, args=(addr, first, texts)) for _ in range(2)]
        for c in clients:
            c.start()
        assert first.wait(120)
        ended = signal_after(proc, signum, delay)
        for c in clients:
            c.join(120)
        where = f"seed {seed} try {i} signal {signum}: "
        assert ended.code == 0 and ended.crash() is None, where + ended.describe()
        for text in texts:
            assert text.startswith("status 503") or (
                '"finish_reason": "' in text.replace('":"', '": "') and text.endswith("[DONE]\n\n")
            ), where + text[-500:]
