# SPDX-License-Identifier: Apache-2.0
"""`tools/kv_cache_quality.py`: each cache scored against the f32 cache on the same file and
windows; coarser caches cost more, and every report is against the same f32 run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tool_scripts import load_tool


def test_caches_scored_against_f32(tiny_model_file: Callable[[str], Path], tmp_path: Path) -> None:
    out = tmp_path / "kv.json"
    args = [str(tiny_model_file("f32")), "--tokens", "161", "--ctx", "80", "--threads", "2"]
    assert load_tool("kv_cache_quality").main([*args, "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["ctx"] == 80 and record["windows"] == 2
    r = record["reports"]
    assert list(r) == ["f16", "q8", "q4"]
    assert {x["tokens"] for x in r.values()} == {2 * 79}
    assert len({x["ppl_ref"] for x in r.values()}) == 1  # one f32 reference for all
    assert 0 < r["f16"]["mean_kl"] < r["q8"]["mean_kl"] < r["q4"]["mean_kl"]
    assert r["q4"]["top1"] <= r["f16"]["top1"] <= 1
