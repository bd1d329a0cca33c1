# SPDX-License-Identifier: Apache-2.0
"""`tools/context_curves.py`: a worker answers the run's commands (the prompt fed in chunks to
each depth, decode probes on demand), llama.cpp's int8 cache is refused without its flash
attention, the ratio tables pair each of our caches with the peer's same cache, and walks
plotted together pool an engine's samples."""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import pytest
from tool_scripts import load_tool


def _tool():  # type: ignore[no-untyped-def]
    return load_tool("context_curves")


def test_worker_feeds_chunks_to_each_depth_and_decodes_on_demand(monkeypatch) -> None:
    cc = _tool()
    fed: list[int] = []
    monkeypatch.setattr("sys.stdin", io.StringIO("warm\nnext\ndecode\ndecode\nnext\ndone\nnext\n"))
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    a = argparse.Namespace(depths="1000,300", chunk=256, decode=4, seed=0)
    resets: list[int] = []
    cc._serve(a, 50, lambda ids: fed.append(len(ids)), lambda: 0.5, lambda: resets.append(len(fed)))
    replies = [json.loads(x) for x in out.getvalue().splitlines()]
    # `warm`: a chunk, a probe, reset; then depths in order, the last chunk of each ending exactly
    # there; `done` stops the worker.
    assert resets == [1]
    assert fed == [256, 256, 44, 256, 256, 188]
    assert replies[0] == {"warm": True}
    assert [r.get("depth") for r in replies[1:]] == [300, None, None, 1000]
    assert replies[1]["chunk_tokens"] == 44 and replies[4]["chunk_tokens"] == 188
    assert replies[2] == {"decode_tok_s": 8.0}


def test_llama_int8_cache_needs_flash_attention() -> None:
    cc = _tool()
    with pytest.raises(SystemExit, match="flash-attn on"):
        cc.main(["run", "--llama", "x.gguf", "--kv-cache", "q8"])


def test_a_missing_peers_python_and_a_crashed_worker_are_named(tmp_path: Path) -> None:
    cc = _tool()
    missing = str(tmp_path / "nope" / "python")
    with pytest.raises(SystemExit, match="no python at .*nope/python: give --peers-python"):
        cc.main(["run", "--llama", "x.gguf", "--peers-python", missing])
    # A worker killed by a signal (llama.cpp built for instructions the CPU lacks: SIGILL).
    a = argparse.Namespace(
        peers_python=sys.executable, threads=1, depths="8", chunk=8, decode=1, probes=1,
        kv_cache="f16", llama_flash_attn="off",
    )  # fmt: skip
    worker = cc.Worker("llama", "x.gguf", a, 0)
    worker.proc.kill()
    with pytest.raises(RuntimeError, match="llama was killed by SIGKILL (during|before) 'warm'"):
        worker.ask("warm", time.monotonic() + 30)
    worker.close()


def _run(engine: str, kv: str, decode: list[float], flash: str | None = None) -> dict:
    run = {"engine": engine, "kv_cache": kv, "points": []}
    if flash:
        run["flash_attn"] = flash
    for depth, rate in zip((1024, 4096), decode, strict=True):
        run["points"].append(
            {
                "depth": depth,
                "prefill_chunk_tok_s": 100.0,
                "prefill_cumulative_tok_s": 100.0,
                "decode_probes_tok_s": [rate, rate],
                "decode_tok_s": rate,
            }
        )
    return run


def test_ratio_tables_pair_the_same_cache() -> None:
    cc = _tool()
    record = {
        "runs": [
            _run("qwen-edge", "f16", [40.0, 30.0]),
            _run("qwen-edge", "q8", [44.0, 40.0]),
            _run("llama.cpp", "f16", [20.0, 10.0], flash="off"),
            _run("llama.cpp", "q8", [22.0, 8.0], flash="on"),
        ],
        "state_memory": [],
    }
    md = cc.markdown(record)
    assert "decode qwen-edge / llama.cpp |" in md
    assert "decode qwen-edge (q8 KV) / llama.cpp (q8 KV, flash attn) |" in md
    assert "qwen-edge / llama.cpp (q8 KV" not in md and "(q8 KV) / llama.cpp |" not in md
    # 30 / 10 at 4k for f16; 40 / 8 for q8.
    assert "| 4096 | 1.00x | 3.00x |" in md and "| 4096 | 1.00x | 5.00x |" in md


def test_an_interrupted_walk_keeps_the_depths_it_finished(monkeypatch, tmp_path) -> None:
    cc = _tool()
    walks: list[str] = []

    class FakeWorker:
        """Answers like a worker; Ctrl-C arrives while it feeds the second depth."""

        def __init__(self, engine: str, model: str, a: argparse.Namespace, seed: int) -> None:
            self.engine, self.busy_s, self.fed = engine, 0.0, 0
            walks.append(engine)

        def ask(self, command: str, deadline: float) -> dict:
            if command == "next":
                self.fed += 1
                if self.fed == 2:
                    raise KeyboardInterrupt
                return {"depth": 1024, "prefill_chunk_tok_s": 9.0, "prefill_cumulative_tok_s": 9.0}
            return {"decode_tok_s": 2.0} if command == "decode" else {}

        def close(self) -> None:
            pass

    monkeypatch.setattr(cc, "Worker", FakeWorker)
    out = tmp_path / "curves.json"
    argv = ["run", "--qwen-edge", "m.qe", "--depths", "1024,4096", "--probes", "2"]
    assert cc.main([*argv, "--repetitions", "3", "--json", str(out)]) == 0
    # One walk, not three: the interruption ends the run, and what it finished is written.
    assert walks == ["qwen-edge"]
    (run,) = json.loads(out.read_text())["runs"]
    assert run["interrupted"] is True
    assert [p["depth"] for p in run["points"]] == [1024]
    assert run["points"][0]["decode_probes_tok_s"] == [2.0, 2.0]


def test_walks_plotted_together_pool_an_engines_samples() -> None:
    cc = _tool()
    first = {
        "config": {"threads": 2},
        "runs": [_run("qwen-edge", "q8", [40.0, 30.0])],
        "state_memory": [{"context": 1024, "f16": 2**20, "q8": 2**19}],
    }
    second = {
        "config": {"threads": 1},
        "runs": [
            _run("qwen-edge", "q8", [42.0, 32.0]),
            _run("llama.cpp", "q8", [12.0, 6.0], flash="on"),
        ],
        "state_memory": [],
    }
    record = cc.merged([first, second])
    assert record["config"] == {"threads": 2} and record["state_memory"][0]["context"] == 1024
    c = cc.curves(record)
    assert set(c) == {"qwen-edge (q8 KV)", "llama.cpp (q8 KV, flash attn)"}
    ours = c["qwen-edge (q8 KV)"]
    assert ours[1024]["decode_tok_s"] == [40.0, 40.0, 42.0, 42.0]  # both walks' probes
    assert ours[4096]["prefill_chunk_tok_s"] == [100.0, 100.0]
    assert (
        "| qwen-edge (q8 KV) | 1024 | 100.0 ± 0.0 | 100.0 ± 0.0 | 41.0 ± 1.2 (n=4) | 1.00 |"
        in cc.markdown(record)
    )
