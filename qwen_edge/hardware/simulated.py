"""A simulated board whose power follows the load: the ground truth for energy and the governor.

`SimBoard` draws `idle_w`, plus `uncore_w` while any thread runs, plus `thread_w` per busy
thread (scaled by the clock cap to the power `clock_power_exp`), and keeps the exact integral.
`SimModel` is a backend (the `Backend` protocol plus `set_threads`) whose forward passes take
simulated time that shrinks with threads by Amdahl's law and with the clock (a `memory_bound`
share does not). Time is a `SimClock`:
nothing sleeps, and whenever its power or energy changes the board rewrites its sensor files
(a RAPL counter that wraps at `rapl_range_uj`; an INA3221-like hwmon channel, mV and mA of the
power now) in a fake sysfs tree under `root`, which the power monitor samples at every tick
through the real sensor code. The cpufreq cap is read back from the same tree, so the
governor's `CpuFreq` turns it.

Used by the tests (deterministic energy accounting and governor goals) and to make the example
report of docs/energy.md without hardware (`tools/energy_example.py`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .power import PowerMonitor, open_sensor

EPOCH = 1_800_000_000.0  # the simulated wall clock's Unix time at 0


class SimClock:
    """Simulated time: `advance` moves it, calling tick listeners at every `period` boundary."""

    def __init__(self, period: float = 0.1):
        self.t = 0.0
        self.period = period
        self._next_tick = period
        self._on_advance: list[Callable[[float, float], None]] = []  # (t0, t1) before a tick
        self._on_tick: list[Callable[[float], None]] = []

    def on_tick(self, fn: Callable[[float], None]) -> None:
        """Calls fn(t) at every tick (a power monitor's `sample`)."""
        self._on_tick.append(fn)

    def on_advance(self, fn: Callable[[float, float], None], first: bool = False) -> None:
        """Calls fn(t0, t1) for every stretch of time before it passes."""
        self._on_advance.insert(0, fn) if first else self._on_advance.append(fn)

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return EPOCH + self.t

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        end = self.t + max(seconds, 0.0)
        while self._next_tick <= end:
            self._move(self._next_tick)
            self._next_tick += self.period
            for fn in self._on_tick:
                fn(self.t)
        self._move(end)

    def _move(self, t: float) -> None:
        if t > self.t:
            for fn in self._on_advance:
                fn(self.t, t)
            self.t = t


@dataclass
class SimBoard:
    """A board with `cores` cores; see the module docstring for its power and speed laws."""

    root: Path
    clock: SimClock = field(default_factory=SimClock)
    cores: int = 4
    idle_w: float = 2.0
    thread_w: float = 1.5
    uncore_w: float = 0.0  # drawn while any thread runs (caches, memory controller)
    token_s: float = 0.04  # one decode token, one thread, top clock
    prefill_token_s: float = 0.004  # one prompt token, one thread, top clock
    serial: float = 0.15  # Amdahl's serial fraction
    memory_bound: float = 0.35  # share of the time that does not scale with the clock
    clock_power_exp: float = 2.4
    khz_levels: tuple[int, ...] = (1_200_000, 1_800_000, 2_400_000)
    rapl_range_uj: int = 50_000_000  # wraps every 50 J, so runs cross it
    busy_threads: int = 0
    segments: list[tuple[float, float, float]] = field(default_factory=list)  # (t0, t1, watts)

    def __post_init__(self) -> None:
        self.rapl = self.root / "class/powercap/intel-rapl:0"
        self.hwmon = self.root / "class/hwmon/hwmon0"
        self.policy = self.root / "devices/system/cpu/cpufreq/policy0"
        for d in (self.rapl, self.hwmon, self.policy):
            d.mkdir(parents=True, exist_ok=True)
        (self.rapl / "name").write_text("package-0\n")
        (self.rapl / "max_energy_range_uj").write_text(f"{self.rapl_range_uj}\n")
        (self.hwmon / "in1_label").write_text("VDD_IN\n")
        (self.hwmon / "in2_label").write_text("VDD_SOC\n")
        for name, value in (("cpuinfo_min_freq", self.khz_levels[0]),
                            ("cpuinfo_max_freq", self.khz_levels[-1]),
                            ("scaling_max_freq", self.khz_levels[-1])):  # fmt: skip
            (self.policy / name).write_text(f"{value}\n")
        (self.policy / "scaling_available_frequencies").write_text(
            " ".join(map(str, self.khz_levels)) + "\n"
        )
        (self.hwmon / "in1_input").write_text("5000\n")  # mV: a 5 V input
        (self.hwmon / "in2_input").write_text("5000\n")
        (self.hwmon / "curr2_input").write_text("100\n")
        # Kept open: the counter is rewritten at every change (a sysfs file is always current).
        self._files = {
            name: os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            for name, path in (("rapl", self.rapl / "energy_uj"),
                               ("hwmon", self.hwmon / "curr1_input"))
        }  # fmt: skip
        self.energy_j = 0.0
        self.clock.on_advance(self._integrate)
        self._write_sensors()

    def monitor(self, kind: str = "rapl") -> PowerMonitor:
        """A power monitor on this board's RAPL counter or its hwmon channel, sampled at the
        clock's ticks through the real sensor code."""
        spec = f"rapl:{self.rapl}" if kind == "rapl" else f"hwmon:{self.hwmon},label=VDD_IN"
        monitor = PowerMonitor(open_sensor(spec), self.clock.period, self.clock)
        self.clock.on_tick(lambda t: monitor.sample())
        return monitor

    # --- physics ---
    @property
    def khz(self) -> int:
        return int((self.policy / "scaling_max_freq").read_text())

    def busy_power(self, threads: int, khz: int | None = None) -> float:
        f = (khz or self.khz) / self.khz_levels[-1]
        uncore = self.uncore_w if threads else 0.0
        return self.idle_w + uncore + threads * self.thread_w * f**self.clock_power_exp

    def power(self) -> float:
        return self.busy_power(self.busy_threads) if self.busy_threads else self.idle_w

    def seconds(self, work_s: float, threads: int, khz: int | None = None) -> float:
        """Wall time of `work_s` seconds of one-thread, top-clock work on `threads` threads."""
        f = (khz or self.khz) / self.khz_levels[-1]
        parallel = self.serial + (1 - self.serial) / threads
        return work_s * parallel * (self.memory_bound + (1 - self.memory_bound) / f)

    def compute(self, work_s: float, threads: int) -> None:
        """Runs `work_s` of work on `threads` threads: time passes at their power."""
        dt = self.seconds(work_s, threads)
        self.busy_threads = threads
        self._write_sensors()
        try:
            self.clock.advance(dt)
        finally:
            self.busy_threads = 0
            self._write_sensors()

    def _integrate(self, t0: float, t1: float) -> None:
        w = self.power()
        self.energy_j += w * (t1 - t0)
        if self.segments and self.segments[-1][1] == t0 and self.segments[-1][2] == w:
            self.segments[-1] = (self.segments[-1][0], t1, w)
        else:
            self.segments.append((t0, t1, w))
        self._write_sensors()

    def _write(self, name: str, text: str) -> None:
        data = text.encode()
        os.pwrite(self._files[name], data, 0)
        os.ftruncate(self._files[name], len(data))

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files = {}

    def _write_sensors(self) -> None:  # sysfs files are current whenever they are read
        if self._files:
            self._write("rapl", f"{int(self.energy_j * 1e6) % self.rapl_range_uj}\n")
            self._write("hwmon", f"{self.power() / 5 * 1000:.3f}\n")  # mA at 5 V

    # --- truth ---
    def _cumulative(self, times: np.ndarray) -> np.ndarray:
        edges = [self.segments[0][0]] + [b for _, b, _ in self.segments]
        joules = np.concatenate([[0.0], np.cumsum([(b - a) * w for a, b, w in self.segments])])
        return np.interp(times, edges, joules)

    def true_energy(self, t0: float, t1: float) -> float:
        """Exact joules between t0 and t1."""
        e = self._cumulative(np.array([t0, t1]))
        return float(e[1] - e[0])

    def true_windows(
        self, t0: float, t1: float, size: float = 1.0, step: float = 0.1
    ) -> np.ndarray:
        """Exact mean power of every `size`-second window in [t0, t1], one per `step`."""
        ends = np.arange(t0 + size, t1 + 1e-9, step)
        return (self._cumulative(ends) - self._cumulative(ends - size)) / size

    def best_rate_under(self, budget_w: float) -> float:
        """The most decode tokens/s at a mean power of `budget_w`: the best time-sharing of
        two settings (threads, clock cap; idle counts, at zero tokens), which no policy beats.
        The yardstick of the governor's throughput."""
        curve = [(self.idle_w, 0.0)] + [
            (self.busy_power(n, k), 1 / self.seconds(self.token_s, n, k))
            for n in range(1, self.cores + 1)
            for k in self.khz_levels
        ]
        best = 0.0
        for p_hi, r_hi in curve:
            if p_hi <= budget_w:
                best = max(best, r_hi)
            for p_lo, r_lo in curve:
                if p_lo <= budget_w < p_hi:
                    best = max(best, r_lo + (budget_w - p_lo) / (p_hi - p_lo) * (r_hi - r_lo))
        return best


class SimState:
    """A simulated sequence: only its position."""

    def __init__(self, context: int):
        self.position = 0
        self.context = context
        self.cache_bytes = 0

    def copy(self) -> SimState:
        s = SimState(self.context)
        s.position = self.position
        return s


@dataclass
class SimConfig:
    vocab_size: int = 64


class SimModel:
    """A backend on a `SimBoard`: forward passes cost simulated time; logits are fixed."""

    isa = "sim"
    decode_weight_bytes = 0

    def __init__(self, board: SimBoard, threads: int | None = None, context: int = 4096):
        self.board = board
        self.config = SimConfig()
        self.context = context
        self.max_threads = board.cores
        self._threads = threads or board.cores

    @property
    def threads(self) -> int:
        return self._threads

    def set_threads(self, n: int) -> None:
        self._threads = max(1, min(int(n), self.max_threads))

    def new_state(self, context: int | None = None) -> SimState:
        return SimState(context or self.context)

    def forward(self, tokens: Sequence[int], state: Any, *, all_logits: bool = False) -> np.ndarray:
        n = len(tokens)
        per_token = self.board.token_s if n == 1 else self.board.prefill_token_s
        # Attention grows with the context: +25 % per 4096 tokens already held.
        self.board.compute(per_token * n * (1 + 0.25 * state.position / 4096), self._threads)
        state.position += n
        logits = np.zeros((n, self.config.vocab_size) if all_logits else self.config.vocab_size,
                          np.float32)  # fmt: skip
        logits[..., (state.position * 7) % self.config.vocab_size] = 1.0
        return logits

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        return self.forward(tokens, self.new_state(), all_logits=True)
