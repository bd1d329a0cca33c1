"""Power sensors and the sampling monitor: where every watt qwen-edge reports comes from.

A sensor is named by a spec `KIND[:WHERE][,option=VALUE]` (`--power-sensor`, or a board
profile's `power` section), so a test or a container can point it at any folder:

* `rapl:DIR` — a powercap zone folder (`/sys/class/powercap/intel-rapl:0`): `energy_uj`, a µJ
  counter that wraps at `max_energy_range_uj`;
* `hwmon:DIR[,label=NAME]` — a hwmon folder or glob (Jetson: `.../ina3221/1-0040/hwmon/hwmon*`,
  `label=VDD_IN`): `power<i>_input` (µW), or `in<i>_input` (mV) × `curr<i>_input` (mA), of the
  labelled channel;
* `battery:DIR` — a power_supply folder (`/sys/class/power_supply/battery`): `power_now` (µW) or
  `current_now` (µA) × `voltage_now` (µV), while discharging;
* `pmic` — the Raspberry Pi 5 PMIC: `vcgencmd pmic_read_adc`, V × I summed over the rails;
* `command:CMD` — a command that prints the power: the first number it prints, in watts;
* `csv:FILE[,offset=SECONDS]` — a meter's log of `timestamp,watts` lines (Unix seconds or ISO
  8601; `offset`: how far the meter's clock is ahead of ours), aligned by time.

Sensors give either power (watts now) or energy (a cumulative counter in joules, which is
exact between two reads). `PowerMonitor` samples one at a fixed period (10 Hz by default) in a
background thread, or when a simulated clock ticks, into a `PowerTrace`: per sample the time,
the power and the cumulative energy (power sensors are integrated by the trapezoid rule,
counters differenced), from which the energy of any interval is read by interpolation.

Unreadable sensors raise `SensorError` with what to do (RAPL is root-only since Linux 5.10).
A sensor that fails while sampling ends the trace there; the monitor keeps the message.
"""

from __future__ import annotations

import glob
import logging
import math
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import SensorError

log = logging.getLogger(__name__)

KINDS = ("none", "rapl", "hwmon", "battery", "pmic", "command", "csv")
DEFAULT_PERIOD = 0.1  # seconds between samples: 10 Hz for commands and logs
FILE_PERIOD = 0.02  # 50 Hz for sysfs files, which cost microseconds to read
RAPL_DEFAULT_RANGE_UJ = 2**32  # when max_energy_range_uj cannot be read
RAPL_HINT = (
    "RAPL energy counters are readable by root only since Linux 5.10. Run as root, or make "
    "them readable until the next boot with "
    "`sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj`, "
    "or for good with a udev rule in /etc/udev/rules.d/99-rapl.rules: "
    'ACTION=="add", SUBSYSTEM=="powercap", RUN+="/bin/chmod a+r /sys%p/energy_uj"'
)


# --- clocks -------------------------------------------------------------------------------------
class Clock(Protocol):
    """Time as the monitor, the governor and the benchmarks see it (a fake one in tests)."""

    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def wall(self) -> float:
        """Unix seconds at `now()` (to align a meter's log)."""
        ...

    def sleep(self, seconds: float) -> None: ...


class RealClock:
    """`time.monotonic` and `time.sleep`."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


# --- sensor specs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SensorSpec:
    """A sensor by kind and place (see the module docstring); `notes` are for people."""

    kind: str
    where: str = ""
    label: str = ""
    offset: float = 0.0
    notes: str = ""

    def __str__(self) -> str:
        text = self.kind + (f":{self.where}" if self.where else "")
        text += f",label={self.label}" if self.label else ""
        return text + (f",offset={self.offset:g}" if self.offset else "")


def parse_sensor_spec(text: str) -> SensorSpec:
    """`KIND[:WHERE][,label=NAME][,offset=SECONDS]` as a `SensorSpec`.

    Raises:
        SensorError: an unknown kind, a missing WHERE or an unknown option.
    """
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise SensorError(
            f"unknown power sensor kind '{kind}' in '{text}'; expected one of {', '.join(KINDS)} "
            "(e.g. rapl:/sys/class/powercap/intel-rapl:0, hwmon:DIR,label=VDD_IN, pmic, "
            "command:'my-meter --watts', csv:meter.csv)"
        )
    options: dict[str, str] = {}
    where = rest
    if kind != "command":  # a command keeps its commas
        where, *opts = rest.split(",")
        for opt in opts:
            key, eq, value = opt.partition("=")
            if not eq or key not in ("label", "offset"):
                raise SensorError(f"power sensor '{text}': unknown option '{opt}'")
            options[key] = value
    if kind in ("rapl", "hwmon", "battery", "command", "csv") and not where:
        raise SensorError(f"power sensor kind '{kind}' needs a place: {kind}:WHERE")
    try:
        offset = float(options.get("offset", 0))
    except ValueError:
        raise SensorError(f"power sensor '{text}': offset must be a number of seconds") from None
    return SensorSpec(kind, where, options.get("label", ""), offset)


# --- sensors ------------------------------------------------------------------------------------
def _read_number(path: Path, what: str, hint: str = "") -> float:
    try:
        text = path.read_text().strip()
    except PermissionError:
        raise SensorError(f"cannot read {path} ({what}): permission denied. {hint}") from None
    except FileNotFoundError:
        raise SensorError(f"{path} ({what}) does not exist (or is gone). {hint}") from None
    except OSError as e:
        raise SensorError(f"cannot read {path} ({what}): {e.strerror or e}. {hint}") from None
    try:
        return float(text)
    except ValueError:
        raise SensorError(f"{path} ({what}) holds '{text[:40]}', not a number") from None


class Sensor:
    """A power source. `cumulative` sensors return joules from `read()`, the others watts;
    `timed` ones (a meter's log) return their own (unix time, watts) rows from `read_rows()`."""

    cumulative = False
    timed = False

    def __init__(self, spec: SensorSpec):
        self.spec = spec

    def read(self) -> float:
        raise NotImplementedError

    def read_rows(self) -> list[tuple[float, float]]:
        raise NotImplementedError

    def close(self) -> None:
        """Releases what the sensor holds (nothing by default)."""


class RaplSensor(Sensor):
    """The powercap energy counter, made monotonic across wraparounds."""

    cumulative = True

    def __init__(self, spec: SensorSpec):
        super().__init__(spec)
        folder = Path(spec.where)
        self.path = folder if folder.name == "energy_uj" else folder / "energy_uj"
        try:
            self.range_uj = _read_number(self.path.parent / "max_energy_range_uj", "counter range")
        except SensorError:
            self.range_uj = float(RAPL_DEFAULT_RANGE_UJ)
        self._last: float | None = None
        self._total_uj = 0.0

    def read(self) -> float:
        raw = _read_number(self.path, "RAPL energy counter", RAPL_HINT)
        if self._last is not None:
            delta = raw - self._last
            if delta < 0:  # the counter wrapped (it runs from 0 to max_energy_range_uj)
                delta += self.range_uj
            self._total_uj += delta
        self._last = raw
        return self._total_uj / 1e6


class HwmonSensor(Sensor):
    """One labelled channel of a hwmon power monitor (INA3221 on Jetson, INA2xx, ...)."""

    def __init__(self, spec: SensorSpec):
        super().__init__(spec)
        folders = sorted(glob.glob(spec.where)) or [spec.where]
        folder = Path(folders[0])
        if not folder.is_dir():
            raise SensorError(
                f"hwmon folder {spec.where} does not exist; list the monitors with "
                "`grep . /sys/class/hwmon/hwmon*/name` and point hwmon: at the right one"
            )
        labels = {}
        for f in sorted(folder.glob("*_label")):
            try:
                labels[f.read_text().strip()] = f.name.split("_")[0]
            except OSError:
                continue
        self.power: Path | None = None
        if spec.label:
            channel = labels.get(spec.label)
            if channel is None:
                raise SensorError(
                    f"hwmon {folder} has no channel labelled '{spec.label}'; its labels: "
                    f"{', '.join(labels) or '(none)'}"
                )
            index = re.sub(r"\D", "", channel)
        else:
            powers = sorted(folder.glob("power*_input"))
            if len(powers) == 1:
                self.power = powers[0]
                return
            index = ""
            if len(labels) != 1:
                raise SensorError(
                    f"hwmon {folder}: say which channel with ,label=NAME (labels: "
                    f"{', '.join(labels) or '(none)'})"
                )
            index = re.sub(r"\D", "", next(iter(labels.values())))
        if (folder / f"power{index}_input").exists():
            self.power = folder / f"power{index}_input"
        self.volts = folder / f"in{index}_input"
        self.amps = folder / f"curr{index}_input"

    def read(self) -> float:
        if self.power is not None:
            return _read_number(self.power, "hwmon power, µW") / 1e6
        return _read_number(self.volts, "hwmon mV") * _read_number(self.amps, "hwmon mA") / 1e6


class BatterySensor(Sensor):
    """A battery's discharge power. Vendors disagree on the sign of `current_now` (the kernel
    documents negative for discharging; many phones report positive), so the magnitude is used
    and `status` says whether the battery is discharging at all."""

    HINT = "Unplug the charger: a charging battery does not measure what the device uses."

    def __init__(self, spec: SensorSpec):
        super().__init__(spec)
        self.folder = Path(spec.where)
        if not self.folder.is_dir():
            raise SensorError(
                f"battery folder {self.folder} does not exist; list them with "
                "`ls /sys/class/power_supply` (phones: battery, bms or a vendor name)"
            )
        self.read()  # fail now, not in the sampling thread

    def read(self) -> float:
        status = self.folder / "status"
        if status.exists():
            try:
                state = status.read_text().strip()
            except OSError:
                state = ""
            if state in ("Charging", "Full"):
                raise SensorError(f"the battery at {self.folder} is {state.lower()}. {self.HINT}")
        if (self.folder / "power_now").exists():
            return abs(_read_number(self.folder / "power_now", "battery µW")) / 1e6
        current = _read_number(self.folder / "current_now", "battery µA")
        voltage = _read_number(self.folder / "voltage_now", "battery µV")
        return abs(current) * voltage / 1e12


def _run_command(argv: Sequence[str], what: str, hint: str = "", timeout: float = 5.0) -> str:
    try:
        out = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise SensorError(f"{what}: {argv[0]} is not installed or not on PATH. {hint}") from None
    except PermissionError:
        raise SensorError(f"{what}: {argv[0]} is not executable. {hint}") from None
    except subprocess.TimeoutExpired:
        raise SensorError(f"{what}: {' '.join(argv)} did not answer in {timeout:g} s") from None
    if out.returncode != 0:
        raise SensorError(
            f"{what}: {' '.join(argv)} failed (exit {out.returncode}): "
            f"{(out.stderr or out.stdout).strip()[:200]}. {hint}"
        )
    return out.stdout


def parse_pmic(text: str) -> float:
    """Watts from `vcgencmd pmic_read_adc`: lines like `VDD_CORE_A current(7)=2.13A` and
    `VDD_CORE_V volt(15)=0.78V`; a rail's power is its current times its voltage.

    Raises:
        SensorError: no rail has both a current and a voltage.
    """
    amps, volts = {}, {}
    for m in re.finditer(r"(\w+)_([AV])\s+\w+\(\d+\)=([\d.]+)[AV]", text):
        (amps if m.group(2) == "A" else volts)[m.group(1)] = float(m.group(3))
    rails = amps.keys() & volts.keys()
    if not rails:
        raise SensorError(
            f"vcgencmd pmic_read_adc printed no rail with both a current and a voltage: "
            f"'{text.strip()[:120]}' (the PMIC ADC exists on the Raspberry Pi 5 only)"
        )
    return sum(amps[r] * volts[r] for r in rails)


class PmicSensor(Sensor):
    """The Raspberry Pi 5 PMIC's rail currents and voltages."""

    HINT = (
        "vcgencmd comes with Raspberry Pi OS (package raspi-utils); the user needs access to "
        "/dev/vcio (the video group)"
    )

    def read(self) -> float:
        return parse_pmic(_run_command(["vcgencmd", "pmic_read_adc"], "Pi 5 PMIC", self.HINT))


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class CommandSensor(Sensor):
    """A command that prints the power in watts (the first number of its output)."""

    def __init__(self, spec: SensorSpec):
        super().__init__(spec)
        self.argv = shlex.split(spec.where)

    def read(self) -> float:
        out = _run_command(self.argv, "power command", timeout=2.0)
        m = _NUMBER.search(out)
        if m is None:
            raise SensorError(
                f"power command '{self.spec.where}' printed '{out.strip()[:80]}', not watts"
            )
        return float(m.group())


def _timestamp(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class CsvSensor(Sensor):
    """An external meter's log, `timestamp,watts` per line, read as it grows. Its timestamps
    (Unix seconds or ISO 8601; `offset` = how far the meter's clock is ahead of ours) place
    each row on our time line, so a log written during the run lines up with its phases."""

    timed = True

    def __init__(self, spec: SensorSpec):
        super().__init__(spec)
        self.path = Path(spec.where)
        try:
            self.path.open("rb").close()
        except OSError as e:
            raise SensorError(
                f"cannot read meter log {self.path}: {e.strerror or e} (start the meter first)"
            ) from None
        self._offset = 0
        self._partial = ""

    def read_rows(self) -> list[tuple[float, float]]:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                f.seek(self._offset)
                text = f.read()
                self._offset = f.tell()
        except OSError as e:
            raise SensorError(f"cannot read meter log {self.path}: {e.strerror or e}") from None
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()  # an incomplete last line waits for its end
        rows = []
        for line in lines:
            cells = [c.strip() for c in re.split(r"[,;\t]", line.strip())]
            if len(cells) < 2 or not cells[0]:
                continue
            try:
                rows.append((_timestamp(cells[0]) - self.spec.offset, float(cells[1])))
            except ValueError:
                continue  # a header or a comment
        return rows


_SENSORS: dict[str, type[Sensor]] = {
    "rapl": RaplSensor,
    "hwmon": HwmonSensor,
    "battery": BatterySensor,
    "pmic": PmicSensor,
    "command": CommandSensor,
    "csv": CsvSensor,
}


def default_period(kind: str) -> float:
    """Seconds between samples for a sensor kind: 50 Hz for sysfs files (an instantaneous
    reading must be sampled fast while the governor switches settings every few tens of
    milliseconds), 10 Hz for commands and meter logs."""
    return FILE_PERIOD if kind in ("rapl", "hwmon", "battery") else DEFAULT_PERIOD


def open_sensor(spec: SensorSpec | str) -> Sensor:
    """The sensor a spec names, after one successful read (so a bad one fails here, clearly).

    Raises:
        SensorError: the kind is `none`, or the sensor is missing or unreadable.
    """
    if isinstance(spec, str):
        spec = parse_sensor_spec(spec)
    if spec.kind == "none":
        raise SensorError(
            "this board has no power sensor"
            + (f" ({spec.notes})" if spec.notes else "")
            + "; give one with --power-sensor (e.g. csv:FILE for an external USB meter's log, "
            "or command:CMD for a command that prints watts)"
        )
    sensor = _SENSORS[spec.kind](spec)
    if not sensor.timed:  # a log's rows are left for the monitor
        sensor.read()
    return sensor


# --- the trace ----------------------------------------------------------------------------------
@dataclass
class PowerTrace:
    """Samples on one time line: time (s), power (W) and cumulative energy (J) per sample."""

    times: list[float] = field(default_factory=list)
    watts: list[float] = field(default_factory=list)
    joules: list[float] = field(default_factory=list)

    def add_power(self, t: float, w: float) -> None:
        if self.times and t <= self.times[-1]:
            return
        j = self.joules[-1] + 0.5 * (w + self.watts[-1]) * (t - self.times[-1]) if self.times else 0
        self.times.append(t)
        self.watts.append(w)
        self.joules.append(j)

    def add_energy(self, t: float, total_j: float, origin: float = 0.0) -> None:
        """A cumulative reading; `origin` is the counter's value at the trace's zero."""
        if self.times and t <= self.times[-1]:
            return
        j = total_j - origin
        w = (j - self.joules[-1]) / (t - self.times[-1]) if self.times else 0.0
        if len(self.times) == 1:
            self.watts[0] = w  # the first sample's power is that of the first interval
        self.times.append(t)
        self.watts.append(w)
        self.joules.append(j)

    def __len__(self) -> int:
        return len(self.joules)  # appended last: every list has at least this many

    def _arrays(self) -> tuple[list[float], list[float]]:
        # A sampling thread may be appending: read the prefix all three lists have.
        n = len(self.joules)
        return self.times[:n], self.joules[:n]

    def covers(self, t0: float, t1: float) -> bool:
        return bool(self.times) and self.times[0] <= t0 + 1e-9 and t1 <= self.times[-1] + 1e-9

    def energy(self, t0: float, t1: float) -> float:
        """Joules between t0 and t1 (linear between samples; clamped to the trace)."""
        times, joules = self._arrays()
        if len(times) < 2:
            return 0.0
        e = np.interp([t0, t1], times, joules)
        return float(e[1] - e[0])

    def mean_watts(self, t0: float, t1: float) -> float:
        return self.energy(t0, t1) / (t1 - t0) if t1 > t0 else 0.0

    def windows(
        self, t0: float, t1: float, size: float = 1.0, step: float = DEFAULT_PERIOD
    ) -> np.ndarray:
        """Average power of every `size`-second window inside [t0, t1], one per `step`."""
        times, joules = self._arrays()
        t1 = min(t1, times[-1]) if times else t0
        if t1 - t0 < size:
            return np.zeros(0)
        ends = np.arange(t0 + size, t1 + 1e-9, step)
        e = np.interp(ends, times, joules) - np.interp(ends - size, times, joules)
        return e / size

    def since(self, t0: float) -> PowerTrace:
        n = len(self)
        i = int(np.searchsorted(self.times[:n], t0))
        return PowerTrace(self.times[i:n], self.watts[i:n], self.joules[i:n])

    def downsample(self, points: int = 600, t0: float | None = None) -> list[list[float]]:
        """[[t - t0, watts], ...] with at most about `points` rows (for JSON records and
        plots); each row's power is the mean over the samples it stands for."""
        n = len(self)
        if not n:
            return []
        base = self.times[0] if t0 is None else t0
        stride = max(1, math.ceil(n / points))
        rows = [[round(self.times[0] - base, 4), round(self.watts[0], 4)]]
        for i in range(stride, n, stride):
            j = i - stride
            watts = (self.joules[i] - self.joules[j]) / (self.times[i] - self.times[j])
            rows.append([round(self.times[i] - base, 4), round(watts, 4)])
        return rows


# --- the monitor --------------------------------------------------------------------------------
class PowerMonitor:
    """Samples a sensor into a `PowerTrace` at `period` seconds.

    `start()` runs a background thread on the real clock; with a simulated clock, the clock
    calls `sample()` at each tick instead. `mark()` takes a sample now and returns its time, so
    a phase's ends are on the trace exactly. After `max_failures` failed reads in a row the
    monitor stops and keeps the reason in `error` (the run goes on; its energy is partial).
    """

    def __init__(
        self,
        sensor: Sensor,
        period: float = DEFAULT_PERIOD,
        clock: Clock | None = None,
        max_failures: int = 3,
    ):
        if period <= 0:
            raise SensorError("the sampling period must be positive")
        self.sensor = sensor
        self.period = period
        self.clock: Clock = clock or RealClock()
        self.trace = PowerTrace()
        self.error: str | None = None
        self.max_failures = max_failures
        self._failures = 0
        self._origin: float | None = None  # a counter's value at the first sample
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[float], None]] = []

    @property
    def ok(self) -> bool:
        return self.error is None

    def on_sample(self, fn: Callable[[float], None]) -> None:
        """Calls fn(t) after every successful sample (a thermal reader, a plot)."""
        self._listeners.append(fn)

    def sample(self) -> float | None:
        """Reads the sensor once; returns the sample's time (None after a failure)."""
        with self._lock:
            if self.error is not None:
                return None
            try:
                if self.sensor.timed:
                    shift = self.clock.now() - self.clock.wall()
                    for wall, w in self.sensor.read_rows():
                        self.trace.add_power(wall + shift, w)
                    t = self.trace.times[-1] if self.trace.times else None
                else:
                    value = self.sensor.read()
                    t = self.clock.now()
                    if self.sensor.cumulative:
                        if self._origin is None:
                            self._origin = value
                        self.trace.add_energy(t, value, self._origin)
                    else:
                        self.trace.add_power(t, value)
            except SensorError as e:
                self._failures += 1
                log.warning("power sensor read failed (%d): %s", self._failures, e)
                if self._failures >= self.max_failures:
                    self.error = f"the power sensor stopped answering: {e}"
                return None
            self._failures = 0
        if t is not None:
            for fn in self._listeners:
                fn(t)
        return t

    def mark(self) -> float:
        """A sample now; returns its time (for a meter's log, or after a failure: the time now,
        which the log's rows will cover later)."""
        t = self.sample()
        return self.clock.now() if t is None or self.sensor.timed else t

    def start(self) -> PowerMonitor:
        """Starts sampling in a background thread (real clock)."""
        if self._thread is None:
            self.sample()
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="qwen-edge-power", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set() and self.error is None:
            next_t += self.period
            self._stop.wait(max(0.0, next_t - time.monotonic()))
            self.sample()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.sample()

    def idle_baseline(self, seconds: float) -> float:
        """Mean power over `seconds` of doing nothing (call before the run)."""
        t0 = self.mark()
        self.clock.sleep(seconds)
        t1 = self.mark()
        if not self.ok:
            raise SensorError(self.error or "the power sensor failed")
        if self.sensor.timed and not self.trace.covers(t0, t1):
            raise SensorError(
                f"the meter log {self.sensor.spec.where} has no rows covering the idle "
                f"measurement ({seconds:g} s): is the meter logging, and are the clocks aligned "
                "(,offset=SECONDS)?"
            )
        return self.trace.mean_watts(t0, t1)
