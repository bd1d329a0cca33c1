"""The power flags of run, chat, serve and bench: clear messages for missing or unreadable
sensors (never a traceback), a governed `run`, `bench --power` on a fake battery."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from qwen_edge.cli import build_parser, main


def _battery(tmp_path: Path, watts: float) -> Path:
    bat = tmp_path / "battery"
    bat.mkdir()
    (bat / "status").write_text("Discharging\n")
    (bat / "power_now").write_text(f"{int(watts * 1e6)}\n")
    return bat


def test_every_generating_command_takes_the_power_flags() -> None:
    for argv in (
        ["run", "m.qe", "-p", "hi"], ["chat", "m.qe"], ["serve", "m.qe"], ["bench", "m.qe"],
    ):  # fmt: skip
        args = build_parser().parse_args(
            [*argv, "--power-budget", "5", "--tokens-per-second", "8", "--power-sensor", "pmic"]
        )
        assert (args.power_budget, args.tokens_per_second, args.power_sensor) == (5.0, 8.0, "pmic")


def test_unreadable_sensors_are_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    counter = zone / "energy_uj"
    counter.write_text("5\n")
    read_text = Path.read_text

    def denied(self: Path, *args: object, **kwargs: object) -> str:
        if self == counter:  # as for a user on Linux >= 5.10
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", denied)
    model = str(tmp_path / "never-loaded.qe")  # the sensor is checked before the model loads
    cases = [
        (["bench", model, "--power", "--power-sensor", f"rapl:{zone}"], "Run as root"),
        (["bench", model, "--power"], "needs a sensor: --power-sensor KIND:WHERE"),
        (["bench", model, "--power", "--board", "rpi4"], "csv:FILE"),
        (["run", model, "-p", "x", "--power-budget", "4", "--power-sensor", "volts:1"],
         "unknown power sensor kind 'volts'"),
        (["bench", model, "--power", "--power-sensor", f"hwmon:{tmp_path}/none*"],
         "does not exist"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_run_under_a_budget(
    tiny_chat_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meter = tmp_path / "meter"
    meter.write_text("#!/bin/sh\necho 3.5\n")
    meter.chmod(meter.stat().st_mode | stat.S_IEXEC)
    argv = [
        "run", str(tiny_chat_checkpoint), "-p", "Once upon a time", "-n", "6", "--json",
        "--power-budget", "50", "--power-sensor", f"command:{meter}", "--idle-seconds", "0.3",
    ]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    power = record["power"]
    assert power["budget_w"] == 50 and power["idle_w"] == pytest.approx(3.5)
    assert power["decode_tokens"] == record["generated_tokens"] - 1  # the first comes from prefill
    assert power["energy"]["watts"] == pytest.approx(3.5)
    assert power["sensor_error"] is None
    assert "governed (budget 50 W)" in captured.err


def test_bench_power_on_a_fake_battery(
    tiny_model_file: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bat = _battery(tmp_path, 4.0)
    argv = [
        "bench", str(tiny_model_file("q4")), "--threads", "1", "--prompt", "8", "--decode", "4",
        "--repetitions", "1", "--warmup", "0", "--no-bandwidth", "--power",
        "--power-sensor", f"battery:{bat}", "--idle-seconds", "0.2",
        "--min-phase-seconds", "0.2", "--json", "-",
    ]  # fmt: skip
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    p = record["power"]
    assert p["sensor"] == f"battery:{bat}" and p["idle_w"] == pytest.approx(4.0)
    assert p["sensor_error"] is None and "board_start" in p and "throttled" in p
    decode = record["runs"][0]["power"]["decode"]["mean"]
    assert decode["watts"] == pytest.approx(4.0)
    assert decode["j_per_token"] == pytest.approx(4.0 * decode["seconds"] / decode["tokens"])
    assert decode["j_per_token_above_idle"] == pytest.approx(0.0, abs=1e-9)
    assert decode["seconds"] >= 0.2  # the phase went on to its minimum length
