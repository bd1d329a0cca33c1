"""Power sensors on fake sysfs trees and fake commands: every kind a board profile names, counter
wraparound, a permission error, a sensor that vanishes mid-run, a meter log aligned by time;
the thermal state from fake zones and fake `vcgencmd` / `nvpmodel` on PATH."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from qwen_edge.errors import SensorError
from qwen_edge.hardware import power, thermal
from qwen_edge.hardware.power import PowerMonitor, open_sensor, parse_sensor_spec
from qwen_edge.hardware.simulated import EPOCH, SimClock

PI5_PMIC = """\
     3V7_WL_SW_A current(0)=0.00390372A
       3V3_SYS_A current(1)=0.06245952A
      VDD_CORE_A current(7)=2.10000000A
     3V7_WL_SW_V volt(8)=3.71964000V
       3V3_SYS_V volt(9)=3.31096000V
      VDD_CORE_V volt(15)=0.80000000V
         EXT5V_V volt(24)=5.13712000V
"""
PI5_WATTS = 0.00390372 * 3.71964 + 0.06245952 * 3.31096 + 2.1 * 0.8


def fake_command(bin_dir: Path, name: str, script: str) -> None:
    """An executable `name` in bin_dir running a shell script."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return path


def test_specs_parse_and_print() -> None:
    spec = parse_sensor_spec("hwmon:/sys/class/hwmon/hwmon*,label=VDD_IN")
    assert (spec.kind, spec.where, spec.label) == ("hwmon", "/sys/class/hwmon/hwmon*", "VDD_IN")
    assert str(spec) == "hwmon:/sys/class/hwmon/hwmon*,label=VDD_IN"
    assert parse_sensor_spec("rapl:/sys/class/powercap/intel-rapl:0").where.endswith("rapl:0")
    assert parse_sensor_spec("command:meter --watts, now").where == "meter --watts, now"
    assert parse_sensor_spec("csv:log.csv,offset=-2.5").offset == -2.5
    assert parse_sensor_spec("pmic").kind == "pmic"
    for bad, message in [
        ("volts:x", "unknown power sensor kind 'volts'"),
        ("rapl", "needs a place"),
        ("hwmon:d,lable=x", "unknown option 'lable=x'"),
        ("csv:f,offset=soon", "offset must be a number"),
    ]:
        with pytest.raises(SensorError, match=message):
            parse_sensor_spec(bad)
    with pytest.raises(SensorError, match="no power sensor.*csv:FILE"):
        open_sensor("none")


def test_rapl_counter_wraps(tmp_path: Path) -> None:
    zone = tmp_path / "intel-rapl:0"
    write(zone / "max_energy_range_uj", "1000000")  # wraps every joule
    counter = write(zone / "energy_uj", "900000")
    sensor = open_sensor(f"rapl:{zone}")
    assert sensor.cumulative and sensor.read() == pytest.approx(0.0)
    for raw, total in [(950_000, 0.05), (100_000, 0.2), (600_000, 0.7), (50_000, 1.15)]:
        counter.write_text(f"{raw}\n")
        assert sensor.read() == pytest.approx(total)
    # Without a readable range the 32-bit default applies; the file itself may be given.
    (zone / "max_energy_range_uj").unlink()
    assert open_sensor(f"rapl:{counter}").range_uj == 2**32


def test_rapl_permission_error_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zone = tmp_path / "intel-rapl:0"
    write(zone / "max_energy_range_uj", "262143328850")
    counter = write(zone / "energy_uj", "1234")
    counter.chmod(0)  # what a kernel >= 5.10 does for non-root users
    if os.geteuid() == 0:  # root reads mode-0 files: make the read fail as it would for a user
        read_text = Path.read_text

        def denied(self: Path, *args: object, **kwargs: object) -> str:
            if self == counter:
                raise PermissionError(13, "Permission denied", str(self))
            return read_text(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(SensorError) as e:
        open_sensor(f"rapl:{zone}")
    message = str(e.value)
    assert f"cannot read {counter}" in message and "permission denied" in message
    assert "Run as root" in message and "chmod a+r" in message and "udev rule" in message


def test_hwmon_ina3221_by_label_and_power_input(tmp_path: Path) -> None:
    hw = tmp_path / "ina3221" / "hwmon" / "hwmon3"
    for i, (label, mv, ma) in enumerate([("VDD_IN", 5000, 1200), ("VDD_CPU_GPU_CV", 5000, 300)]):
        write(hw / f"in{i + 1}_label", label)
        write(hw / f"in{i + 1}_input", str(mv))
        write(hw / f"curr{i + 1}_input", str(ma))
    sensor = open_sensor(f"hwmon:{tmp_path / 'ina3221/hwmon/hwmon*'},label=VDD_IN")
    assert sensor.read() == pytest.approx(6.0)
    with pytest.raises(SensorError, match="no channel labelled 'VDD_SYS'.*VDD_IN"):
        open_sensor(f"hwmon:{hw},label=VDD_SYS")
    with pytest.raises(SensorError, match="say which channel"):
        open_sensor(f"hwmon:{hw}")
    with pytest.raises(SensorError, match="does not exist"):
        open_sensor(f"hwmon:{tmp_path / 'nowhere*'},label=VDD_IN")
    # An INA2xx-style monitor with one power channel in µW needs no label.
    ina = tmp_path / "hwmon7"
    write(ina / "power1_input", "4250000")
    assert open_sensor(f"hwmon:{ina}").read() == pytest.approx(4.25)


@pytest.mark.parametrize("current", ["-850000", "850000"])
def test_battery_either_sign_convention(tmp_path: Path, current: str) -> None:
    bat = tmp_path / "battery"
    write(bat / "status", "Discharging")
    write(bat / "current_now", current)
    write(bat / "voltage_now", "3900000")
    assert open_sensor(f"battery:{bat}").read() == pytest.approx(0.85 * 3.9)


def test_battery_power_now_and_charging(tmp_path: Path) -> None:
    bat = tmp_path / "BAT0"
    write(bat / "status", "Discharging")
    write(bat / "power_now", "7300000")
    sensor = open_sensor(f"battery:{bat}")
    assert sensor.read() == pytest.approx(7.3)
    write(bat / "status", "Charging")
    with pytest.raises(SensorError, match="charging.*Unplug the charger"):
        sensor.read()
    with pytest.raises(SensorError, match="power_supply"):
        open_sensor(f"battery:{tmp_path / 'nope'}")


def test_pmic_through_a_fake_vcgencmd(fake_path: Path) -> None:
    with pytest.raises(SensorError, match="vcgencmd is not installed.*raspi-utils"):
        open_sensor("pmic")
    (fake_path / "pmic.txt").write_text(PI5_PMIC)
    fake_command(fake_path, "vcgencmd", f'[ "$1" = pmic_read_adc ] && cat {fake_path}/pmic.txt\n')
    assert open_sensor("pmic").read() == pytest.approx(PI5_WATTS)
    (fake_path / "pmic.txt").write_text('error=1 error_msg="Command not registered"\n')
    with pytest.raises(SensorError, match="no rail with both"):
        power.PmicSensor(parse_sensor_spec("pmic")).read()


def test_command_prints_watts(fake_path: Path) -> None:
    fake_command(fake_path, "meter", 'echo "power: 3.25 W"\n')
    assert open_sensor("command:meter --watts").read() == pytest.approx(3.25)
    fake_command(fake_path, "broken", 'echo "no reading"\n')
    with pytest.raises(SensorError, match="printed 'no reading', not watts"):
        open_sensor("command:broken")
    fake_command(fake_path, "failing", "echo oops >&2; exit 3\n")
    with pytest.raises(SensorError, match="failed \\(exit 3\\): oops"):
        open_sensor("command:failing")


def test_csv_meter_log_is_aligned_by_time(tmp_path: Path) -> None:
    # The meter's clock runs 2 s ahead of ours; its rows land where they were measured.
    clock = SimClock(0.1)
    log = tmp_path / "meter.csv"
    log.write_text("timestamp,watts\n")
    monitor = PowerMonitor(open_sensor(f"csv:{log},offset=2"), 0.1, clock)
    clock.on_tick(lambda t: monitor.sample())
    with open(log, "a") as f:
        for i in range(31):  # 3 s at 10 Hz: 4 W, then 6 W from 1 s on, written as time passes
            t = i * 0.1
            f.write(f"{EPOCH + t + 2:.3f},{4.0 if t < 1 else 6.0}\n")
    clock.advance(0.5)
    with open(log, "a") as f:
        f.write(f"{EPOCH + 3.1 + 2:.3f},")  # a row cut mid-write is kept for later
    clock.advance(2.0)
    with open(log, "a") as f:
        f.write("6.0\n")
    monitor.sample()
    trace = monitor.trace
    assert trace.times[0] == pytest.approx(0.0) and trace.times[-1] == pytest.approx(3.1)
    assert trace.mean_watts(0.0, 0.9) == pytest.approx(4.0)
    assert trace.mean_watts(1.0, 3.0) == pytest.approx(6.0)
    iso = tmp_path / "iso.csv"
    iso.write_text("2026-01-01T00:00:00Z,5\n2026-01-01T00:00:01+00:00,7\n")
    rows = open_sensor(f"csv:{iso}").read_rows()
    assert [w for _, w in rows] == [5.0, 7.0] and rows[1][0] - rows[0][0] == pytest.approx(1.0)
    with pytest.raises(SensorError, match="start the meter first"):
        open_sensor(f"csv:{tmp_path / 'missing.csv'}")


def test_monitor_survives_a_sensor_that_vanishes(tmp_path: Path) -> None:
    clock = SimClock(0.1)
    bat = tmp_path / "battery"
    write(bat / "power_now", "2000000")
    monitor = PowerMonitor(open_sensor(f"battery:{bat}"), 0.1, clock)
    clock.on_tick(lambda t: monitor.sample())
    clock.advance(1.0)
    assert monitor.ok and len(monitor.trace) == 10
    (bat / "power_now").unlink()  # the driver went away (a USB meter unplugged)
    clock.advance(1.0)
    assert not monitor.ok and "stopped answering" in (monitor.error or "")
    assert len(monitor.trace) == 10  # the trace ends where the sensor did
    assert monitor.trace.energy(0.1, 1.0) == pytest.approx(2.0 * 0.9)
    clock.advance(1.0)  # later ticks do nothing
    assert len(monitor.trace) == 10


def test_threaded_monitor_samples_at_its_period(tmp_path: Path) -> None:
    # The real clock and thread: only that it samples and stops (no timing thresholds).
    bat = tmp_path / "battery"
    write(bat / "power_now", "1500000")
    monitor = PowerMonitor(open_sensor(f"battery:{bat}"), 0.01).start()
    while len(monitor.trace) < 5:
        monitor.clock.sleep(0.01)
    monitor.stop()
    n = len(monitor.trace)
    assert n >= 5 and all(w == pytest.approx(1.5) for w in monitor.trace.watts)
    monitor.clock.sleep(0.05)
    assert len(monitor.trace) == n


def test_trace_windows_and_energy() -> None:
    trace = power.PowerTrace()
    for i in range(31):
        trace.add_power(i * 0.1, 2.0 if i < 10 else 4.0)
    assert trace.energy(0.0, 0.9) == pytest.approx(1.8)
    assert trace.energy(1.0, 3.0) == pytest.approx(8.0)
    windows = trace.windows(0.0, 3.0)
    assert windows.size == 21 and windows[-1] == pytest.approx(4.0)
    assert len(trace.downsample(10)) <= 11


def test_thermal_snapshot(tmp_path: Path, fake_path: Path) -> None:
    sys_root = tmp_path / "sys"
    write(sys_root / "class/thermal/thermal_zone0/type", "cpu-thermal")
    write(sys_root / "class/thermal/thermal_zone0/temp", "61250")
    write(sys_root / "class/thermal/thermal_zone1/type", "gpu-thermal")  # no temp: left out
    policy = sys_root / "devices/system/cpu/cpufreq/policy0"
    for name, value in [("scaling_cur_freq", 1500000), ("scaling_max_freq", 2400000),
                        ("cpuinfo_max_freq", 2400000)]:  # fmt: skip
        write(policy / name, str(value))
    before = thermal.snapshot(sys_root)
    assert before == {
        "temperatures_c": {"cpu-thermal": 61.25},
        "cpu_khz": {"policy0": {"cur": 1500000, "max": 2400000, "hw_max": 2400000}},
    }
    assert thermal.throttled_during(before, before) is None
    fake_command(fake_path, "vcgencmd", 'echo "throttled=0x${THROTTLE:-0}"\n')
    fake_command(fake_path, "nvpmodel", 'echo "NV Power Mode: 15W"; echo 0\n')
    os.environ["THROTTLE"] = "0"
    try:
        calm = thermal.snapshot(sys_root)
        assert calm["pi_throttled"] == {"raw": "0x0", "flags": []}
        assert calm["jetson_power_mode"] == "15W"
        os.environ["THROTTLE"] = "50004"  # throttled now, throttling and under-voltage occurred
        hot = thermal.snapshot(sys_root)
    finally:
        del os.environ["THROTTLE"]
    assert hot["pi_throttled"]["flags"] == [
        "throttled",
        "under-voltage occurred",
        "throttling occurred",
    ]
    assert thermal.throttled_during(calm, hot) is True
    assert thermal.throttled_during(calm, calm) is False
