#!/usr/bin/env python3
"""The example report of docs/energy.md, made on the simulated board (no hardware needed).

Runs `bench --sweep`'s code on `qwen_edge.hardware.simulated` (a 4-core board: 2 W idle,
1.5 W per busy thread at the top clock, three clock caps, a RAPL counter), over 1-4 threads, two
context lengths and two budgets, then `qwen-edge report`'s code:

    python tools/energy_example.py -o docs/energy    # sim.jsonl, report.html and the PNGs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwen_edge.evaluation import bench, report, sweep
from qwen_edge.hardware.governor import CpuFreq
from qwen_edge.hardware.simulated import SimBoard, SimClock, SimModel


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--out", default="docs/energy", help="folder for the PNGs")
    p.add_argument("--rows", help="also keep the JSON lines here")
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qe-sim-"))
    board = SimBoard(root, SimClock(0.02))
    monitor = board.monitor("rapl")
    power = bench.Power(monitor, monitor.idle_baseline(2.0), CpuFreq.open(root))
    grid = sweep.SweepConfig(
        models=("sim-0.8b-q4.qe",), threads=(1, 2, 3, 4), contexts=(16, 4096), budgets=(4.0, 6.0),
        bench=bench.BenchConfig(prompt=256, decode=128, repetitions=1, warmup=0,
                                measure_bandwidth=False, budget_seconds=20.0),
    )  # fmt: skip

    def load(
        path: Path, threads: int, context: int, isa: str | None, kv_cache: str = "f16"
    ) -> SimModel:
        return SimModel(board, threads, context)

    rows_path = Path(a.rows) if a.rows else root / "sim.jsonl"
    rows_path.unlink(missing_ok=True)
    sweep.write_rows(sweep.sweep(grid, power, load), rows_path)
    rows = sweep.read_rows([rows_path])
    for r in rows:
        d = r["decode"]
        g = (r["governed"] or {}).get("power_1s_w") or {}
        print(
            f"| {r['threads']} | {r['context']} | {r['budget_w'] or ''} | "
            f"{r['decode_tok_s']:.1f} | {d['watts']:.2f} | {d['j_per_token']:.4f} | "
            f"{d['tokens_per_j']:.2f} | {d['j_per_token_above_idle']:.4f} | "
            + (f"{g['p95']:.2f} / {g['under_budget']:.0%} |" if g else " |")
        )
    out = Path(a.out)
    written = report.write_report(rows, root / "report.html", out, "qwen-edge energy report "
                                  "(simulated 4-core board)")  # fmt: skip
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
