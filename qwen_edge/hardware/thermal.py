"""The board's thermal state: temperatures, CPU clocks, throttling, the Jetson power mode.

Sustained runs throttle, and a throttled number is a different board's number: `bench --power`
records this state at the start and the end of each run and its extremes while it runs. Every
reader takes the sysfs root, so tests point it at a fake tree; the commands (`vcgencmd`,
`nvpmodel`) are found on PATH, so tests put fakes there. Anything absent is simply left out.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

# `vcgencmd get_throttled` bits (Raspberry Pi firmware): now (0-3) and since boot (16-19).
THROTTLE_BITS = {
    0: "under-voltage",
    1: "arm frequency capped",
    2: "throttled",
    3: "soft temperature limit",
    16: "under-voltage occurred",
    17: "arm frequency capping occurred",
    18: "throttling occurred",
    19: "soft temperature limit occurred",
}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _command(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=3, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def temperatures(sys_root: Path = Path("/sys")) -> dict[str, float]:
    """°C per thermal zone, keyed by the zone's type (`cpu-thermal`, `x86_pkg_temp`, ...)."""
    out = {}
    for zone in sorted((sys_root / "class/thermal").glob("thermal_zone*")):
        kind, temp = _read(zone / "type"), _read(zone / "temp")
        if temp is None:
            continue
        try:
            out[kind or zone.name] = int(temp) / 1000
        except ValueError:
            continue
    return out


def cpu_clocks(sys_root: Path = Path("/sys")) -> dict[str, dict[str, int]]:
    """kHz per cpufreq policy: current, the cap (`scaling_max_freq`) and the hardware maximum."""
    out = {}
    for policy in sorted((sys_root / "devices/system/cpu/cpufreq").glob("policy*")):
        values = {}
        for key, name in (("cur", "scaling_cur_freq"), ("max", "scaling_max_freq"),
                          ("hw_max", "cpuinfo_max_freq")):  # fmt: skip
            text = _read(policy / name)
            if text is not None and text.isdigit():
                values[key] = int(text)
        if values:
            out[policy.name] = values
    return out


def pi_throttled() -> dict[str, Any] | None:
    """`vcgencmd get_throttled` decoded, or None where there is no vcgencmd."""
    text = _command(["vcgencmd", "get_throttled"])
    if not text or "=" not in text:
        return None
    try:
        value = int(text.split("=", 1)[1].strip(), 16)
    except ValueError:
        return None
    return {
        "raw": f"0x{value:x}",
        "flags": [name for bit, name in THROTTLE_BITS.items() if value >> bit & 1],
    }


def jetson_power_mode() -> str | None:
    """The Jetson power mode (`nvpmodel -q`: "NV Power Mode: 15W"), None elsewhere."""
    text = _command(["nvpmodel", "-q"])
    if not text:
        return None
    for line in text.splitlines():
        if "Power Mode" in line and ":" in line:
            return line.split(":", 1)[1].strip()
    return None


def snapshot(sys_root: Path = Path("/sys")) -> dict[str, Any]:
    """Everything above that this board has, as one JSON-ready dict."""
    out: dict[str, Any] = {"temperatures_c": temperatures(sys_root)}
    clocks = cpu_clocks(sys_root)
    if clocks:
        out["cpu_khz"] = clocks
    throttled = pi_throttled()
    if throttled is not None:
        out["pi_throttled"] = throttled
    mode = jetson_power_mode()
    if mode is not None:
        out["jetson_power_mode"] = mode
    return out


def throttled_during(before: dict[str, Any], after: dict[str, Any]) -> bool | None:
    """Whether the Pi firmware reports throttling now or raised a flag between two snapshots;
    None where there is no such report (clocks alone are no evidence: they idle down)."""
    if "pi_throttled" not in after:
        return None
    flags = set(after["pi_throttled"]["flags"])
    old = set((before.get("pi_throttled") or {}).get("flags", []))
    return any(not f.endswith("occurred") for f in flags) or bool(flags - old)
