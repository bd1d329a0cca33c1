"""`bench --sweep` rows and `qwen-edge report` on the simulated board; the HTML page rendered by
headless Chromium (Debian's `chromium`, which .ci/run installs) and checked as a picture."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qwen_edge.cli import main
from qwen_edge.evaluation import bench, report, sweep
from qwen_edge.hardware.governor import CpuFreq
from qwen_edge.hardware.simulated import SimBoard, SimClock, SimModel

ROW_KEYS = {
    "schema", "engine", "model", "recipe", "time", "git_commit", "sensor", "idle_w", "threads",
    "context", "budget_w", "prefill_tok_s", "decode_tok_s", "prefill", "decode", "governed",
}  # fmt: skip


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    root = tmp_path_factory.mktemp("sweep")
    board = SimBoard(root / "sys", SimClock(0.02))
    monitor = board.monitor("rapl")
    power = bench.Power(monitor, monitor.idle_baseline(1.0), CpuFreq.open(root / "sys"))
    grid = sweep.SweepConfig(
        models=("sim-q4.qe",), threads=(1, 2, 4), contexts=(16, 2048), budgets=(5.0,),
        bench=bench.BenchConfig(prompt=64, decode=32, repetitions=1, warmup=0,
                                measure_bandwidth=False, budget_seconds=8, min_phase_seconds=1),
    )  # fmt: skip

    def load(
        path: Path, threads: int, context: int, isa: str | None, kv_cache: str = "f16"
    ) -> SimModel:
        return SimModel(board, threads, context)

    out = root / "results.jsonl"
    seen: list[dict] = []
    assert sweep.write_rows(sweep.sweep(grid, power, load), out, seen.append) == 8
    (root / "results.jsonl").open("a").write('{"truncated": \n')  # a cut last line is skipped
    got = sweep.read_rows([out])
    assert got == seen
    return got


def test_sweep_rows(rows: list[dict]) -> None:
    assert [(r["context"], r["threads"], r["budget_w"]) for r in rows] == [
        (16, 1, None), (16, 2, None), (16, 4, None), (16, 4, 5.0),
        (2048, 1, None), (2048, 2, None), (2048, 4, None), (2048, 4, 5.0),
    ]  # fmt: skip
    for r in rows:
        assert set(r) >= ROW_KEYS and r["schema"] == sweep.ROW_SCHEMA
        assert r["decode"]["j_per_token"] > 0 and r["decode_tok_s"] > 0
    plain = [r for r in rows if r["budget_w"] is None]
    assert all(r["prefill"]["tokens_per_j"] > 0 for r in plain)
    # A longer context makes each decode step slower (attention), so costlier per token.
    short, long = rows[2], rows[6]
    assert long["decode_tok_s"] < short["decode_tok_s"]
    assert long["decode"]["j_per_token"] > short["decode"]["j_per_token"]
    governed = rows[3]["governed"]
    assert governed["power_1s_w"]["under_budget"] >= 0.95 and governed["trace"]


def _render(html: Path, png: Path, size: tuple[int, int]) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("QWEN_EDGE_REQUIRE_CHROMIUM"):
            pytest.fail("QWEN_EDGE_REQUIRE_CHROMIUM is set but chromium is not on PATH")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run does)")
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size={size[0]},{size[1]}", f"--screenshot={png}", html.as_uri()],
        capture_output=True, timeout=180, check=True,
    )  # fmt: skip


def test_report_renders(
    rows: list[dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import matplotlib.image

    results = tmp_path / "results.jsonl"
    sweep.write_rows(iter(rows), results)
    html = tmp_path / "report.html"
    assert main(["report", str(results), "-o", str(html), "--png-dir", str(tmp_path / "png")]) == 0
    assert "wrote" in capsys.readouterr().out
    text = html.read_text()
    # Self-contained: every picture is inside the page; no file or network reference.
    assert text.count("src='data:image/png;base64,") == 4
    assert "http" not in text and "src='file" not in text
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert pngs == ["energy_vs_threads.png", "power_over_time_0.png",
                    "power_over_time_1.png", "rate_vs_power.png"]  # fmt: skip
    for p in (tmp_path / "png").iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size < 200_000

    shot = tmp_path / "shot.png"
    _render(html, shot, (1000, 1400))
    image = matplotlib.image.imread(shot)[..., :3]
    assert image.shape[:2] == (1400, 1000)
    ink = np.mean(image.sum(axis=2) < 2.9)  # pixels that are not white
    assert ink > 0.03, "the page rendered blank"
    # The plots are drawn: the qwen-edge blue (#1f77b4) is on the page.
    blue = np.all(np.abs(image - np.array([0x1F, 0x77, 0xB4]) / 255) < 0.08, axis=2)
    assert blue.sum() > 200


def test_report_without_matplotlib_and_errors(
    rows: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    written = report.write_report(rows, tmp_path / "r.html")
    assert not written["plots"]
    page = (tmp_path / "r.html").read_text()
    assert "qwen-edge[report]" in page and page.count("<tr>") == len(rows) + 1
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 1
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("{}\n")
    assert main(["report", str(tmp_path / "empty.jsonl")]) == 1
    assert "bench --sweep --power" in capsys.readouterr().err
