# SPDX-License-Identifier: Apache-2.0
"""`tools/size_curve.py` merges `compare_peers.py` records per size and prompt length: a size
with runs at 128 and 512 tokens keeps both (prefill's ratio moves with the prompt), the
ratios are ours over llama.cpp's, export rows merge, and two runs at one length are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tool_scripts import load_tool


def _tool():  # type: ignore[no-untyped-def]
    return load_tool("size_curve")


def _row(engine: str, prefill: float, decode: float, threads: int = 2) -> dict:
    isa = (
        "avx512_vnni"
        if engine == "qwen-edge"
        else "CPU : AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 |"
    )
    return {
        "isa": isa,
        "group": "q4",
        "engine": engine,
        "threads": threads,
        "file_bytes": 5_500_000_000,
        "prefill_tok_s": {"mean": prefill, "std": 0.1},
        "decode_tok_s": {"mean": decode, "std": 0.01},
        "peak_rss_bytes": 6_000_000_000,
        "load_s": {"mean": 1.0, "std": 0.0},
    }


def _run(path: Path, prompt: int, ours: float, llama: float) -> Path:
    rec = {
        "time": "2026-12-03T18:00:00+0000",
        "config": {"prompt": prompt, "decode": 32},
        "load_average": {"start": [3.0, 2.0, 1.0], "end": [3.5, 2.5, 1.5]},
        "read_bandwidth_gbs": {"start": {"2": 20.0}, "end": {"2": 19.0}},
        "rows": [
            _row("qwen-edge", ours, 3.0),
            _row("llama.cpp", llama, 2.0),
            _row("qwen-edge", 1.0, 1.0, threads=1),  # another thread count: left out
        ],
    }
    path.write_text(json.dumps(rec))
    return path


def _export(path: Path) -> Path:
    def engine(wall: float, cpu: float, rss: int) -> dict:
        return {"wall_s": {"mean": wall}, "cpu_s": {"mean": cpu}, "peak_rss_bytes": rss,
                "file_bytes": 5_500_000_000}  # fmt: skip

    rec = {"recipe": "q4", "llama_type": "Q4_0", "llama_outtype": "q8_0",
           "engines": {"native": engine(300, 400, 10**9), "llama": engine(200, 250, 10**10)},
           "load_average": [1, 1, 1], "time": "2026-12-03T18:00:00Z"}  # fmt: skip
    path.write_text(json.dumps(rec))
    return path


def test_runs_per_prompt_length(tmp_path: Path) -> None:
    tool = _tool()
    pp128 = _run(tmp_path / "run-9b-pp128.json", 128, 6.0, 4.0)
    pp512 = _run(tmp_path / "run-9b-pp512.json", 512, 9.0, 4.5)
    small = _run(tmp_path / "run-0.8b.json", 128, 100.0, 50.0)
    export = _export(tmp_path / "export-9b.json")
    out = tmp_path / "curve.json"
    argv = ["--run", f"9b={pp512}", "--run", f"9b={pp128}", "--run", f"0.8b={small}",
            "--export", f"9b={export}", "--json", str(out), "--markdown", str(tmp_path / "t.md"),
            "--png", str(tmp_path / "curve.png")]  # fmt: skip
    assert tool.main(argv) == 0
    rec = json.loads(out.read_text())
    assert list(rec["sizes"]) == ["0.8b", "9b"]  # by size, not by argument order
    runs = rec["sizes"]["9b"]["runs"]
    assert list(runs) == ["pp128", "pp512"]
    assert runs["pp128"]["ratios"]["prefill_tok_s"] == pytest.approx(1.5)
    assert runs["pp512"]["ratios"]["prefill_tok_s"] == pytest.approx(2.0)
    assert runs["pp512"]["ratios"]["decode_tok_s"] == pytest.approx(1.5)
    assert runs["pp512"]["load_average"]["start"] == [3.0, 2.0, 1.0]
    assert rec["sizes"]["9b"]["export_ratios"]["cpu"] == pytest.approx(1.6)
    assert "export_ratios" not in rec["sizes"]["0.8b"]
    table = (tmp_path / "t.md").read_text().splitlines()
    rows_9b = [line for line in table if line.startswith("| 9b ")]
    # qwen-edge and llama.cpp at each prompt length; the export cells only once
    assert [line.split(" | ")[2] for line in rows_9b] == ["128", "128", "512", "512"]
    assert [line.split(" | ")[4] for line in rows_9b[:2]] == ["avx512_vnni", "avx512_vnni"]
    assert "2.00x" in rows_9b[2] and "1.60x" in rows_9b[0] and "1.60x" not in rows_9b[2]
    assert (tmp_path / "curve.png").stat().st_size > 10_000


def test_two_runs_at_one_length_are_refused(tmp_path: Path) -> None:
    tool = _tool()
    a = _run(tmp_path / "a.json", 512, 9.0, 4.5)
    b = _run(tmp_path / "b.json", 512, 8.0, 4.5)
    with pytest.raises(SystemExit, match="two runs of 9b at a 512-token prompt"):
        tool.main(["--run", f"9b={a}", "--run", f"9b={b}"])
    with pytest.raises(SystemExit, match="no rows of group 'q8'"):
        tool.main(["--run", f"9b={a}", "--group", "q8"])
