"""The power governor: holds a power budget, or a token rate at the lowest energy.

It acts on three knobs between forward passes: the native runtime's active thread count, a
pause after each forward (the duty cycle), and cpufreq's `scaling_max_freq` where it is
writable. The caller (the generation loop through `generation.pacing.PacedModel`) calls
`before_forward(n)` and `after_forward(n)` around every forward pass; the governor never
imports the model, it is handed `set_threads`.

How it decides (a model-based feedback controller):

* an operating point is (threads, clock cap); for each point it has used it keeps two measured
  numbers: the board's power while computing there and the seconds per decoded token. Idle
  (pausing) is a point too: the idle power measured before the run, zero tokens;
* the best average rate for a mean power T mixes two points in time, the two around T on the
  upper concave hull of (power, tokens/s): e.g. 2 threads for 76 % of the time and 3 threads
  for 24 %, or one point and pauses (the duty cycle). With a budget, T is just under it
  (`margin`); with a target rate R, T is the least power whose hull rate is R, so whether racing
  to idle (the fastest point and long pauses) or running slow and steady (fewer threads, lower
  clocks, no pauses) costs less is measured on the board, never assumed. Steps are assigned to
  the two points by their time shares (error diffusion), so every 1-s window holds the mix;
* each control period, the measured power of the window corrects the estimates of the points
  used in it (the window's power is idle plus each point's power above idle times its share of
  the window: a normalised least-mean-squares step; a single unknown point is solved exactly);
* it explores an untried neighbour (one thread more or less, one clock level up or down) of
  the best mix's points when a prediction says the hull would gain, or lose less than 1 %: from
  two measured thread counts at that clock, power linear in threads and time per token linear
  in 1/threads; from one, its numbers scaled (power with threads and clock², speed linearly).
  An explored point is mixed with a point of the best mix (or pauses) in the shares that put
  the predicted mean at the target, so exploring keeps to the budget;
* a 1-s window over the budget cuts the time at the higher point at once.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .power import Clock, PowerMonitor

log = logging.getLogger(__name__)

MIN_DUTY = 0.02  # never pause for more than ~50x the compute time
IDLE = None  # the "point" of pausing, in a mix
STEP = 0.5  # how much of a window's error corrects known estimates (smooths sensor noise)


@dataclass(frozen=True, order=True)
class Point:
    """An operating point: active threads and the clock cap in kHz (None: not controlled)."""

    threads: int
    khz: int | None = None


@dataclass
class PointStats:
    """What the governor measured at one point."""

    busy_w: float | None = None  # board power while computing
    token_s: float | None = None  # seconds per decode token while computing
    busy_s: float = 0.0  # time spent computing at this point

    def update_speed(self, token_s: float) -> None:
        self.token_s = token_s if self.token_s is None else 0.8 * self.token_s + 0.2 * token_s

    @property
    def known(self) -> bool:
        return self.busy_w is not None and self.token_s is not None


class CpuFreq:
    """The clock cap (`scaling_max_freq`) of every cpufreq policy; `restore()` puts the caps
    back as they were. `levels` are the caps the governor may choose, in kHz, ascending."""

    def __init__(self, policies: list[Path], levels: list[int]):
        self.policies = policies
        self.levels = levels
        self._saved = {p: (p / "scaling_max_freq").read_text().strip() for p in policies}

    @classmethod
    def open(cls, sys_root: Path = Path("/sys"), max_levels: int = 3) -> CpuFreq | None:
        """The writable policies of this machine, or None when there are none (not root, a
        container's read-only sysfs, no cpufreq driver)."""
        policies = []
        for p in sorted((sys_root / "devices/system/cpu/cpufreq").glob("policy*")):
            cap = p / "scaling_max_freq"
            try:
                current = cap.read_text().strip()
                if os.access(cap, os.W_OK):
                    cap.write_text(current)  # a read-only sysfs says so only on write
                    policies.append(p)
            except OSError:
                continue
        if not policies:
            return None
        first = policies[0]
        try:
            low = int((first / "cpuinfo_min_freq").read_text())
            high = int((first / "cpuinfo_max_freq").read_text())
        except (OSError, ValueError):
            return None
        try:
            available = sorted(int(x) for x in (first / "scaling_available_frequencies")
                               .read_text().split())  # fmt: skip
        except (OSError, ValueError):
            available = []
        if available:
            picks = np.linspace(0, len(available) - 1, min(max_levels, len(available)))
            levels = sorted({available[round(i)] for i in picks})
        else:
            levels = sorted({int(x) for x in np.linspace(max(low, high // 2), high, max_levels)})
        return cls(policies, levels)

    def set(self, khz: int) -> None:
        for p in self.policies:
            try:
                (p / "scaling_max_freq").write_text(str(khz))
            except OSError as e:
                log.warning("cannot set %s/scaling_max_freq: %s", p, e)

    def restore(self) -> None:
        for p, value in self._saved.items():
            try:
                (p / "scaling_max_freq").write_text(value)
            except OSError:
                continue


class Governor:
    """Keeps the mean power under `budget_w` and/or paces decoding to `tokens_per_s`.

    Args:
        monitor: the sampling monitor of the board's sensor (its clock is the governor's).
        idle_w: the board's idle power, measured before the run.
        budget_w: the power budget in watts, or None.
        tokens_per_s: a target decode rate, or None.
        max_threads: the most threads the model may use; `set_threads` changes them (None:
            the thread count is fixed, e.g. the numpy reference backend).
        cpufreq: the clock caps, where writable.
        control_period: seconds between decisions.
        margin: the target power is `budget_w * (1 - margin)`.

    Raises:
        ConfigError: neither a budget nor a rate, or a value that is not positive.
    """

    def __init__(
        self,
        monitor: PowerMonitor,
        *,
        idle_w: float,
        budget_w: float | None = None,
        tokens_per_s: float | None = None,
        max_threads: int = 1,
        set_threads: Callable[[int], None] | None = None,
        cpufreq: CpuFreq | None = None,
        control_period: float = 0.3,
        margin: float = 0.025,
    ):
        if budget_w is None and tokens_per_s is None:
            raise ConfigError("the governor needs a power budget or a target rate")
        if budget_w is not None and budget_w <= 0:
            raise ConfigError(f"the power budget must be positive, not {budget_w}")
        if tokens_per_s is not None and tokens_per_s <= 0:
            raise ConfigError(f"the target rate must be positive, not {tokens_per_s}")
        self.monitor = monitor
        self.clock: Clock = monitor.clock
        self.idle_w = idle_w
        self.budget_w = budget_w
        self.tokens_per_s = tokens_per_s
        self.target_w = budget_w * (1 - margin) if budget_w is not None else None
        self.set_threads = set_threads
        self.cpufreq = cpufreq
        self.control_period = control_period
        threads = list(range(1, max_threads + 1)) if set_threads is not None else [max_threads]
        levels: list[int | None] = list(cpufreq.levels) if cpufreq is not None else [None]
        self.points = [Point(n, k) for n in threads for k in levels]
        self.stats = {p: PointStats() for p in self.points}
        self.warnings: list[str] = []
        if budget_w is not None and budget_w <= idle_w:
            self.warnings.append(
                f"the budget {budget_w:g} W is not above the idle power {idle_w:.2f} W, so it "
                "cannot hold; running at the lowest setting with the longest pauses"
            )
        # The mix: `hi` for a share `alpha` of the time, `lo` (a point, or IDLE: pauses) for the
        # rest. Start low (one thread, the highest clock, half the time) and climb from there.
        start = Point(threads[0], levels[-1])
        self.lo: Point | None = IDLE
        self.hi = start
        self.alpha = 0.5 if budget_w is not None else 1.0
        self._debt = 0.0  # seconds at hi minus alpha times all seconds (error diffusion)
        self._mixed_at = self.clock.now()  # when the current two points were chosen
        self.started = self.clock.now()
        self._last_control = self.started
        self._t0 = self.started
        self._due: float | None = None
        self._busy: deque[tuple[float, float, Point]] = deque(maxlen=8192)
        self.decode_tokens = 0
        self._apply(start, first=True)

    # --- the pacing hooks ---
    def before_forward(self, n_tokens: int) -> None:
        """Called before each forward pass of `n_tokens` tokens: picks its point."""
        if self.lo is IDLE or self.lo == self.hi:
            point = self.hi
        else:
            point = self.hi if self._debt <= 0 else self.lo
        if point != self.point:
            self._apply(point)
        self._t0 = self.clock.now()

    def after_forward(self, n_tokens: int) -> None:
        """Called after each forward pass: learns, decides, then pauses as the mix needs."""
        t1 = self.clock.now()
        dt = max(t1 - self._t0, 1e-9)
        self._busy.append((self._t0, t1, self.point))
        self.stats[self.point].busy_s += t1 - self._t0
        self._debt += dt * ((self.point == self.hi) - self.alpha)
        if n_tokens == 1:
            self.decode_tokens += 1
            self.stats[self.point].update_speed(dt)
        pause = 0.0
        if self.lo is IDLE:
            pause = dt * (1 - self.alpha) / self.alpha
        if self.tokens_per_s is not None and n_tokens == 1:
            # Each token has a slot of 1/R seconds; a late step may catch up by at most 1 s.
            period = 1 / self.tokens_per_s
            self._due = t1 if self._due is None else max(self._due + period, t1 - 1.0)
            pause = max(pause, self._due - t1)
        if pause > 0:
            self.clock.sleep(pause)
            self._debt -= pause * self.alpha
        if self.clock.now() - self._last_control >= self.control_period:
            self._control(self.clock.now())

    # --- knobs ---
    def _apply(self, point: Point, first: bool = False) -> None:
        if self.set_threads is not None:
            self.set_threads(point.threads)
        changed = first or point.khz != self.point.khz
        if self.cpufreq is not None and point.khz is not None and changed:
            self.cpufreq.set(point.khz)
        self.point = point

    def _set_mix(self, lo: Point | None, hi: Point, alpha: float) -> None:
        # A debt from before is kept to about a step, so that it cannot come back as a burst of
        # one point (which would swing the 1-s power), nor bias the shares.
        if (lo, hi) != (self.lo, self.hi):
            self._debt = 0.0
            self._mixed_at = self.clock.now()
        else:
            self._debt = float(np.clip(self._debt, -0.05, 0.05))
        self.lo, self.hi = lo, hi
        self.alpha = float(np.clip(alpha, MIN_DUTY, 1.0))

    # --- estimates ---
    def _estimate(self, w0: float, w1: float) -> None:
        """Corrects the busy power of the points used in [w0, w1] from its measured power."""
        share: dict[Point, float] = {}
        for a, b, p in self._busy:
            if b > w0 and a < w1:
                share[p] = share.get(p, 0.0) + (min(b, w1) - max(a, w0)) / (w1 - w0)
        if sum(share.values()) < 0.05:
            return
        above = self.monitor.trace.mean_watts(w0, w1) - self.idle_w
        unknown = [p for p in share if self.stats[p].busy_w is None]
        known = sum(
            f * ((self.stats[p].busy_w or 0.0) - self.idle_w)
            for p, f in share.items()
            if p not in unknown
        )
        if len(unknown) == 1:
            p = unknown[0]
            self.stats[p].busy_w = self.idle_w + max(above - known, 0.0) / share[p]
            return
        if unknown:
            return  # two new points in one window: wait for a window with one
        error = above - known
        norm = sum(f * f for f in share.values())
        for p, f in share.items():
            busy = self.stats[p].busy_w
            assert busy is not None
            self.stats[p].busy_w = max(self.idle_w, busy + STEP * error * f / norm)

    def _curve(self, extra: Point | None = None) -> dict[Point | None, tuple[float, float]]:
        """(power, tokens/s) of idle, of every known point, and of `extra` as predicted."""
        curve: dict[Point | None, tuple[float, float]] = {IDLE: (self.idle_w, 0.0)}
        for p in self.points:
            s = self.stats[p]
            if s.known:
                assert s.busy_w is not None and s.token_s is not None
                curve[p] = (s.busy_w, 1 / s.token_s)
        if extra is not None and extra not in curve:
            predicted = self._predict(extra)
            if predicted is not None:
                curve[extra] = predicted
        return curve

    def _predict(self, p: Point) -> tuple[float, float] | None:
        """(busy watts, tokens/s) at p: from the two nearest known thread counts at its clock
        (power linear in threads, seconds per token linear in 1/threads: a fixed part and
        Amdahl's law), else the nearest known point scaled (power with threads and clock²,
        speed linearly)."""
        known = [q for q in self.points if self.stats[q].known]
        if not known:
            return None
        same = sorted(
            (q for q in known if q.khz == p.khz), key=lambda q: abs(q.threads - p.threads)
        )
        if len(same) >= 2:
            (n1, d1, t1), (n2, d2, t2) = (
                (q.threads, (self.stats[q].busy_w or 0) - self.idle_w, self.stats[q].token_s or 0)
                for q in same[:2]
            )
            dynamic = d1 + (d2 - d1) / (n2 - n1) * (p.threads - n1)
            b = (t1 - t2) / (1 / n1 - 1 / n2)
            token_s = t1 + b * (1 / p.threads - 1 / n1)
            if dynamic > 0 and token_s > 0:
                return self.idle_w + dynamic, 1 / token_s
        q = min(known, key=lambda q: self._distance(p, q))
        busy, token_s = self.stats[q].busy_w, self.stats[q].token_s
        assert busy is not None and token_s is not None
        clock = (p.khz / q.khz) if p.khz and q.khz else 1.0
        dynamic = max(busy - self.idle_w, 1e-3) * p.threads / q.threads * clock**2
        return self.idle_w + dynamic, p.threads * clock / (q.threads * token_s)

    def _distance(self, p: Point, q: Point) -> int:
        levels = sorted({x.khz or 0 for x in self.points})
        return abs(p.threads - q.threads) + abs(levels.index(p.khz or 0) - levels.index(q.khz or 0))

    # --- decisions ---
    @staticmethod
    def _best_mix(
        curve: dict[Point | None, tuple[float, float]], target_w: float
    ) -> tuple[Point | None, Point | None, float, float]:
        """(lo, hi, share of hi, tokens/s): the fastest mix of two points at mean `target_w`."""
        best: tuple[Point | None, Point | None, float, float] = (IDLE, IDLE, 1.0, 0.0)
        for hi, (p_hi, r_hi) in curve.items():
            if p_hi <= target_w and r_hi > best[3]:
                best = (hi, hi, 1.0, r_hi)
            for lo, (p_lo, r_lo) in curve.items():
                if p_lo <= target_w < p_hi:
                    alpha = (target_w - p_lo) / (p_hi - p_lo)
                    rate = r_lo + alpha * (r_hi - r_lo)
                    if rate > best[3]:
                        best = (lo, hi, alpha, rate)
        return best

    @staticmethod
    def _power_for_rate(curve: dict[Point | None, tuple[float, float]], rate: float) -> float:
        """The least mean power of a mix of two points that makes `rate` tokens/s."""
        best = float("inf")
        for p_hi, r_hi in curve.values():
            if r_hi >= rate:
                best = min(best, p_hi)
            for p_lo, r_lo in curve.values():
                if r_lo < rate <= r_hi:
                    best = min(best, p_lo + (rate - r_lo) / (r_hi - r_lo) * (p_hi - p_lo))
        return best

    def _target(self, curve: dict[Point | None, tuple[float, float]]) -> float:
        target = self.target_w if self.target_w is not None else float("inf")
        if self.tokens_per_s is not None:
            target = min(target, self._power_for_rate(curve, self.tokens_per_s))
        if target == float("inf"):  # the rate is out of reach of every known point
            target = max(w for w, _ in curve.values())
        return target

    def _value(self, curve: dict[Point | None, tuple[float, float]]) -> tuple[bool, float]:
        """What a curve is worth, to compare (higher is better): tokens/s at the budget; for a
        target rate, whether it reaches the rate, then minus its power for it (or its top rate).
        """
        if self.tokens_per_s is not None:
            power = self._power_for_rate(curve, self.tokens_per_s)
            if power == float("inf"):
                return False, max(r for _, r in curve.values())
            return True, -power
        assert self.target_w is not None
        return True, self._best_mix(curve, self.target_w)[3]

    @staticmethod
    def _gain(new: tuple[bool, float], old: tuple[bool, float]) -> float:
        """How much better `new` is, relative to `old` (1.0 for reaching an unreached rate)."""
        if new[0] != old[0]:
            return 1.0 if new[0] else -1.0
        return (new[1] - old[1]) / max(abs(old[1]), 1e-9)

    def _control(self, now: float) -> None:
        self._last_control = now
        trace = self.monitor.trace
        if not self.monitor.ok or len(trace) < 2:
            return
        w1 = trace.times[-1]
        # A sensor that averages, or lags, still shows the previous mix for about a sample.
        w0 = max(trace.times[0], w1 - self.control_period, self._mixed_at + self.monitor.period)
        if w1 - w0 < 0.5 * self.control_period:
            return
        self._estimate(w0, w1)
        if self.budget_w is not None and self.budget_w <= self.idle_w:
            self._set_mix(IDLE, self.points[0], MIN_DUTY)
            return
        curve = self._curve()
        if len(curve) == 1:  # nothing known yet: keep measuring the starting point
            return
        lo, hi, alpha, _ = self._best_mix(curve, self._target(curve))
        # Explore the neighbour of the best mix's points whose prediction lifts the curve most
        # (or about keeps it: a prediction only extrapolates, the measurement decides).
        value = self._value(curve)
        gains = {
            q: self._gain(self._value(self._curve(q)), value)
            for base in (hi, lo)
            if base is not IDLE
            for q in self.points
            if self._distance(base, q) == 1 and not self.stats[q].known
        }
        q = max(gains, key=lambda q: gains[q], default=None)
        if q is not None and gains[q] > -0.01:
            # Mixed with a point of the best mix so that, as predicted, the mean stays at the
            # target: the budget holds while exploring, and the window has one unknown.
            predicted = self._predict(q)
            assert predicted is not None
            target, p_q = self._target(curve), predicted[0]
            if p_q >= target or hi is IDLE or curve[hi][0] <= p_q:
                partner = lo if lo is not None and curve[lo][0] < min(p_q, target) else IDLE
                p_lo = curve[partner][0]
                self._set_mix(partner, q, (target - p_lo) / max(p_q - p_lo, 1e-6))
            else:
                self._set_mix(q, hi, (target - p_q) / (curve[hi][0] - p_q))
            return
        if hi is IDLE:
            hi, alpha = (
                min((p for p in curve if p is not IDLE), key=lambda p: curve[p][0]),
                MIN_DUTY,
            )
        assert hi is not None
        if self.budget_w is not None and w1 - 1.0 >= trace.times[0]:
            last = trace.mean_watts(w1 - 1.0, w1)
            if last > self.budget_w:  # over budget now: less of the higher point at once
                alpha *= 0.9 * self.budget_w / last
        self._set_mix(lo, hi, alpha)

    # --- results ---
    def finish(self) -> dict[str, Any]:
        """Restores the clocks and returns how the run went (see docs/energy.md)."""
        if self.cpufreq is not None:
            self.cpufreq.restore()
        return self.report(self.started, self.clock.now())

    def report(self, t0: float, t1: float) -> dict[str, Any]:
        """The budget held and the rate kept over [t0, t1], and the points measured."""
        trace = self.monitor.trace
        windows = trace.windows(t0, t1) if len(trace) > 1 else np.zeros(0)
        out: dict[str, Any] = {
            "budget_w": self.budget_w,
            "target_tokens_per_s": self.tokens_per_s,
            "idle_w": self.idle_w,
            "seconds": t1 - t0,
            "decode_tokens": self.decode_tokens,
            "mix": {
                "hi": _point_dict(self.hi),
                "lo": _point_dict(self.lo),
                "hi_share": self.alpha,
            },
            "sensor_error": self.monitor.error,
            "warnings": self.warnings,
        }
        if windows.size:
            out["power_1s_w"] = {
                "mean": float(windows.mean()),
                "p95": float(np.percentile(windows, 95)),
                "max": float(windows.max()),
                "windows": int(windows.size),
            }
            if self.budget_w is not None:
                out["power_1s_w"]["under_budget"] = float(np.mean(windows <= self.budget_w))
        out["points"] = [
            {
                **_point_dict(p),
                "busy_w": s.busy_w,
                "tokens_per_s_busy": 1 / s.token_s if s.token_s else None,
                "j_per_token_above_idle": (s.busy_w - self.idle_w) * s.token_s
                if s.busy_w is not None and s.token_s
                else None,
                "busy_seconds": s.busy_s,
            }
            for p, s in self.stats.items()
            if s.busy_w is not None or s.token_s is not None
        ]
        if self.tokens_per_s is not None:
            known = [p for p in self.points if self.stats[p].known]
            fastest = min(known, key=lambda p: self.stats[p].token_s or 1e9, default=None)
            racing = self.lo is IDLE and self.hi == fastest
            out["strategy"] = "race-to-idle" if racing else "slow-and-steady"
        return out


def _point_dict(p: Point | None) -> dict[str, Any] | None:
    return None if p is None else {"threads": p.threads, "khz": p.khz}
