# SPDX-License-Identifier: Apache-2.0
"""Smoke test of `tools/bench_speculative.py` on a tiny random model with the MTP head: the
decode comparison finds speculation's tokens identical to plain decoding, and --verify-cost
records the checkpointed (replay) and plain verification costs per length. (The llama.cpp
columns need a llama-server and are not run here.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tool_scripts import load_tool

from qwen_edge.backends import native
from qwen_edge.export import presets
from qwen_edge.export.convert import export
from qwen_edge.export.random_checkpoint import write_random_checkpoint

pytestmark = pytest.mark.skipif(not native.available(), reason="the native core is not built")


def _tool():  # type: ignore[no-untyped-def]
    return load_tool("bench_speculative")


def test_decode_and_verify_cost(tmp_path: Path) -> None:
    ckpt = write_random_checkpoint(tmp_path / "ckpt", presets.hf_config("tiny", vocab_size=1000))
    model = tmp_path / "tiny-mtp.qe"
    export(ckpt, model, "q8", keep_mtp=True)
    tool = _tool()
    out = tmp_path / "decode.json"
    args = [str(model), "--threads", "1", "--max-tokens", "12", "--draft-tokens", "2",
            "--draft-rows", "0", "--repetitions", "1", "--prompts", "2",
            "--json", str(out)]  # fmt: skip
    assert tool.main(args) == 0
    rows = json.loads(out.read_text())["runs"][0]["rows"]
    assert [r["speculative"] is None for r in rows] == [True, False]
    assert all(r["identical"] for r in rows) and 0 <= rows[1]["acceptance_rate"] <= 1
    out = tmp_path / "cost.json"
    assert tool.main([str(model), "--verify-cost", "--threads", "1", "--repetitions", "1",
                      "--json", str(out)]) == 0  # fmt: skip
    costs = json.loads(out.read_text())["runs"][0]["verify_cost"]
    assert [c["k"] for c in costs] == list(range(1, 9))
    for c in costs:
        for name in ("replay_accept", "replay_reject", "none"):
            assert c[f"verify_{name}_cpu_s"] > 0 and c[f"verify_{name}_steps"] > 0
