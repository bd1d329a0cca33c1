"""`bench --power` on the simulated board: the energy of each phase against the simulated truth
(goal: within 2 %), through the real bench code and the real sensor code; a governed decode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qwen_edge.evaluation import bench
from qwen_edge.hardware.simulated import SimBoard, SimModel

CFG = bench.BenchConfig(
    threads=(1, 4), prompt=256, decode=128, repetitions=2, warmup=0, measure_bandwidth=False
)


def sim_power(tmp_path: Path, sensor: str) -> tuple[SimBoard, bench.Power, Any]:
    board = SimBoard(tmp_path / "sys")
    monitor = board.monitor(sensor)
    power = bench.Power(monitor, monitor.idle_baseline(2.0))

    def load(
        path: Path, threads: int, context: int, isa: str | None, kv_cache: str = "f16"
    ) -> SimModel:
        return SimModel(board, threads, context)

    return board, power, load


@pytest.mark.parametrize("sensor", ["rapl", "hwmon"])
def test_energy_per_token_matches_the_truth(tmp_path: Path, sensor: str) -> None:
    board, power, load = sim_power(tmp_path, sensor)
    assert power.idle_w == pytest.approx(board.idle_w, rel=1e-3)
    record = bench.run("sim.qe", CFG, power, load)
    assert record["power"]["idle_w"] == power.idle_w
    assert record["power"]["sensor"].startswith(sensor)
    assert record["power"]["sensor_error"] is None
    checked = 0
    for run in record["runs"]:
        for phase in ("prefill", "decode"):
            reps = run["power"][phase]["repetitions"]
            assert len(reps) == CFG.repetitions
            for rep in reps:
                t0, t1 = rep["start"], rep["start"] + rep["seconds"]
                truth = board.true_energy(t0, t1)
                above = truth - board.idle_w * (t1 - t0)
                assert rep["j_per_token"] == pytest.approx(truth / rep["tokens"], rel=0.02)
                assert rep["tokens_per_j"] == pytest.approx(rep["tokens"] / truth, rel=0.02)
                assert rep["watts"] == pytest.approx(truth / (t1 - t0), rel=0.02)
                assert rep["j_per_token_above_idle"] == pytest.approx(
                    above / rep["tokens"], rel=0.03
                )
                checked += 1
            mean = run["power"][phase]["mean"]
            assert mean["j_per_token"] == pytest.approx(
                sum(r["j_per_token"] for r in reps) / len(reps)
            )
    assert checked == 2 * 2 * CFG.repetitions
    # Four threads draw more power but finish sooner: both show in the record.
    one, four = (r["power"]["decode"]["mean"] for r in record["runs"])
    assert four["watts"] > one["watts"] and four["seconds"] < one["seconds"]
    text = bench.format_table(record)
    assert "J/token" in text and "idle 2.00 W" in text


def test_governed_decode_in_the_record(tmp_path: Path) -> None:
    _, power, load = sim_power(tmp_path, "rapl")
    cfg = bench.BenchConfig(
        threads=(4,), prompt=64, decode=64, repetitions=1, warmup=0, measure_bandwidth=False,
        budget_w=5.0, budget_seconds=10.0,
    )  # fmt: skip
    record = bench.run("sim.qe", cfg, power, load)
    g = record["governed"]
    assert g["budget_w"] == 5.0 and g["power_1s_w"]["p95"] <= 5.0
    assert 0 < g["throughput_kept"] < 1  # under the budget it is slower than unconstrained
    assert g["tokens_per_s"] == pytest.approx(
        g["throughput_kept"] * g["unconstrained_tokens_per_s"]
    )
    assert g["trace"][0][0] == pytest.approx(0.0, abs=0.11) and len(g["trace"]) > 50
    assert {"hi", "lo", "hi_share"} <= set(g["mix"]) and g["points"]
    assert "governed (budget 5 W)" in bench.format_table(record)
