"""The server under a power governor: every request's forward passes go through it (the one
worker runs them), and it reports on the run when the server stops."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path

import pytest

from qwen_edge.evaluation.bench import Power, finish_governed, make_governor
from qwen_edge.generation.llm import load
from qwen_edge.generation.pacing import PacedModel
from qwen_edge.hardware.power import PowerMonitor, open_sensor
from qwen_edge.serving.server import serve


def test_requests_are_paced_by_the_governor(tiny_chat_checkpoint: Path, tmp_path: Path) -> None:
    bat = tmp_path / "battery"
    bat.mkdir()
    (bat / "power_now").write_text("3000000\n")
    monitor = PowerMonitor(open_sensor(f"battery:{bat}"), 0.02).start()
    power = Power(monitor, monitor.idle_baseline(0.1))
    llm = load(tiny_chat_checkpoint, context=256)
    governor = make_governor(power, llm.model, budget_w=10.0, tokens_per_s=None)
    llm.model = PacedModel(llm.model, governor)
    srv = serve(llm, "127.0.0.1", 0, "tiny")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 6, "seed": 1}
        conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=60)
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "x"})
        answer = json.loads(conn.getresponse().read())
        conn.close()
    finally:
        srv.shutdown()
        srv.server_close()
    report = finish_governed(governor, power)
    monitor.stop()
    generated = answer["usage"]["completion_tokens"]
    assert generated >= 1 and governor.decode_tokens == generated - 1  # one from the prefill
    assert report["budget_w"] == 10.0 and report["energy"]["watts"] == pytest.approx(3.0)
