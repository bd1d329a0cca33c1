"""tools/power_peers.py: engines measured in child processes under this process's sensor, rows
in the sweep schema (the qwen-edge side here; llama.cpp too when QWEN_EDGE_PEER_GGUF names a
GGUF of a model and llama-cpp-python is installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from qwen_edge.evaluation import sweep

TOOL = Path(__file__).resolve().parents[2] / "tools" / "power_peers.py"


def test_rows_per_engine_and_thread_count(
    tiny_model_file: Callable[[str], Path], tmp_path: Path
) -> None:
    bat = tmp_path / "battery"
    bat.mkdir()
    (bat / "status").write_text("Discharging\n")
    (bat / "power_now").write_text("6000000\n")
    out = tmp_path / "peers.jsonl"
    argv = [
        sys.executable, str(TOOL), "run", "--power-sensor", f"battery:{bat}",
        "--idle-seconds", "0.2", "--qwen-edge", f"q4={tiny_model_file('q4')}", "--threads", "1,2",
        "--prompt", "8", "--decode", "4", "--min-phase-seconds", "0.1", "--cooldown", "0",
        "-o", str(out),
    ]  # fmt: skip
    gguf = os.environ.get("QWEN_EDGE_PEER_GGUF")
    if gguf:
        argv += ["--llama", f"q4={gguf}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = sweep.read_rows([out])
    engines = {"qwen-edge"} | ({"llama.cpp"} if gguf else set())
    assert {r["engine"] for r in rows} == engines
    assert sorted(r["threads"] for r in rows if r["engine"] == "qwen-edge") == [1, 2]
    for r in rows:
        assert r["recipe"] == "q4" and r["idle_w"] == pytest.approx(6.0)
        for phase in ("prefill", "decode"):
            assert r[phase]["watts"] == pytest.approx(6.0)
            assert r[phase]["j_per_token"] == pytest.approx(6.0 / r[f"{phase}_tok_s"], rel=1e-6)
        assert r["decode"]["tokens"] >= 4 and r["decode"]["seconds"] >= 0.1
    json.dumps(rows)
    bad = subprocess.run(
        [sys.executable, str(TOOL), "run", "--power-sensor", "volts:1", "--qwen-edge", "a=b"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1 and "unknown power sensor kind" in bad.stderr
