"""Board profiles: per-device defaults (threads, cores, model size, recipe, context, power sensor).

Profiles are data, one JSON file per board in `boards/` (installed as `qwen_edge/boards/`).
JSON rather than TOML because `tomllib` exists only from Python 3.11 and JetPack 6 ships 3.10;
the stdlib reads JSON everywhere and the profiles need no comments beyond their `notes` fields.

Commands take a profile with `--board NAME` (or a path to a JSON file); `board_defaults` gives
what it chooses on this machine (the command line fills every option the user left unset) and
`pin_to_cpus` restricts the process to the profile's cores, so the native thread pool (created
later) inherits that affinity.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SensorError
from .power import KINDS as POWER_KINDS
from .power import SensorSpec, parse_sensor_spec

SCHEMA = 1
ARCHES = ("aarch64", "x86_64")
# Feature names as `_core.cpu_info()` reports them; ISA tags as the kernel tables are named.
FEATURES = ("neon", "dotprod", "i8mm", "fp16", "avx2", "avx_vnni", "avx512", "avx512_vnni")
ISAS = ("best", "ref", "neon", "neon_dotprod", "neon_i8mm", "avx2", "avx_vnni", "avx512_vnni")
MODELS = ("0.8b", "2b", "4b", "9b")
RECIPES = ("f32", "bf16", "f16", "q8", "q4")

_PACKAGE = Path(__file__).resolve().parent.parent
# Installed wheel: qwen_edge/boards/; source checkout or editable install: <repo>/boards/.
BOARD_DIRS = (_PACKAGE / "boards", _PACKAGE.parent / "boards")


@dataclass(frozen=True)
class MemoryTier:
    """Defaults for boards with at least `min_ram_gb` of RAM."""

    min_ram_gb: float
    model: str
    recipe: str
    context: int


@dataclass(frozen=True)
class Board:
    """One board profile (see `boards/README.md` for the meaning of each field)."""

    name: str
    description: str
    arch: str
    cores: str
    features: tuple[str, ...]
    expected_isa: str
    cpus: tuple[int, ...] | str | None  # explicit list, "big", or None (all)
    threads: int  # 0 = one per selected core
    memory: tuple[MemoryTier, ...]
    power: SensorSpec
    cmake_args: tuple[str, ...]
    build_notes: str
    path: Path

    def tier(self, ram_gb: float | None) -> MemoryTier:
        """The defaults for `ram_gb` of RAM (the smallest tier when unknown)."""
        if ram_gb is None:
            return self.memory[0]
        fitting = [t for t in self.memory if t.min_ram_gb <= ram_gb]
        return fitting[-1] if fitting else self.memory[0]

    def resolve_cpus(self, sysfs: Path = Path("/sys/devices/system/cpu")) -> list[int] | None:
        """The cores to run on here: the profile's list (cores this machine lacks are dropped),
        the big cores for "big", or None for all."""
        if self.cpus is None:
            return None
        if self.cpus == "big":
            return big_cores(sysfs)
        online = _online_cpus()
        chosen = [c for c in self.cpus if online is None or c in online]
        return chosen or None

    def resolve_threads(self, cpus: Sequence[int] | None) -> int:
        """Worker threads: the profile's count, or one per selected core when it says 0."""
        if self.threads > 0:
            return self.threads
        if cpus:
            return len(cpus)
        return os.cpu_count() or 1


# --- loading and validation ---------------------------------------------------------------------
def list_boards() -> list[str]:
    """Names of the bundled profiles."""
    for d in BOARD_DIRS:
        if d.is_dir():
            return sorted(p.stem for p in d.glob("*.json"))
    return []


def _find(name: str) -> Path:
    if name.endswith(".json") or os.sep in name:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"board profile {path} does not exist")
        return path
    for d in BOARD_DIRS:
        path = d / f"{name}.json"
        if path.is_file():
            return path
    raise ConfigError(
        f"unknown board '{name}'; known boards: {', '.join(list_boards()) or '(none found)'} "
        "(or give the path of a JSON profile)"
    )


def load_board(name: str) -> Board:
    """Loads and validates a bundled profile by name, or a profile file by path.

    Raises:
        ConfigError: unknown board, unreadable JSON, or a field that is missing or invalid
            (the message names the file and the field).
    """
    path = _find(name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"board profile {path}: cannot read JSON ({e})") from None
    return _parse(data, path)


def _parse(data: Any, path: Path) -> Board:
    def fail(field: str, why: str) -> ConfigError:
        return ConfigError(f"board profile {path}: field '{field}' {why}")

    def get(obj: Any, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
        field = f"{where}{key}"
        if not isinstance(obj, dict) or key not in obj:
            raise fail(field, "is missing")
        value = obj[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise fail(field, f"has the wrong type ({type(value).__name__})")
        return value

    def choice(value: str, allowed: Sequence[str], field: str) -> str:
        if value not in allowed:
            raise fail(field, f"is '{value}', expected one of {', '.join(allowed)}")
        return value

    if get(data, "schema", int) != SCHEMA:
        raise fail("schema", f"is {data['schema']}, this qwen-edge reads schema {SCHEMA}")
    name = get(data, "name", str)
    if name != path.stem:
        raise fail("name", f"is '{name}' but the file is {path.name}")
    arch = choice(get(data, "arch", str), ARCHES, "arch")
    cpu = get(data, "cpu", dict)
    features = tuple(get(cpu, "features", list, "cpu."))
    for f in features:
        choice(f, FEATURES, "cpu.features")
    expected_isa = choice(get(cpu, "expected_isa", str, "cpu."), ISAS, "cpu.expected_isa")

    cpus: tuple[int, ...] | str | None
    raw_cpus = data.get("cpus", None)
    if raw_cpus is None or raw_cpus == "big":
        cpus = raw_cpus
    elif (
        isinstance(raw_cpus, list)
        and raw_cpus
        and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in raw_cpus)
    ):
        cpus = tuple(raw_cpus)
    else:
        raise fail("cpus", 'must be a list of core numbers, "big" or null')
    threads = get(data, "threads", int)
    if threads < 0:
        raise fail("threads", "must be >= 0 (0 = one per selected core)")

    tiers = []
    for i, t in enumerate(get(data, "memory", list)):
        where = f"memory[{i}]."
        tier = MemoryTier(
            min_ram_gb=float(get(t, "min_ram_gb", (int, float), where)),
            model=choice(get(t, "model", str, where), MODELS, where + "model"),
            recipe=choice(get(t, "recipe", str, where), RECIPES, where + "recipe"),
            context=get(t, "context", int, where),
        )
        if tier.context < 256:
            raise fail(where + "context", "must be at least 256")
        if tiers and tier.min_ram_gb <= tiers[-1].min_ram_gb:
            raise fail(where + "min_ram_gb", "must increase from one tier to the next")
        tiers.append(tier)
    if not tiers or tiers[0].min_ram_gb != 0:
        raise fail("memory", "needs at least one tier, the first with min_ram_gb 0")

    p = get(data, "power", dict)
    kind = choice(get(p, "kind", str, "power."), POWER_KINDS, "power.kind")
    where = ""
    if kind in ("rapl", "hwmon", "battery", "csv"):
        where = get(p, "path", str, "power.")
    elif kind == "command":
        where = get(p, "command", str, "power.")
    try:
        spec = parse_sensor_spec(f"{kind}:{where}" if where else kind)
    except SensorError as e:
        raise fail("power", str(e)) from None
    power = SensorSpec(kind, spec.where, p.get("label", ""), 0.0, p.get("notes", ""))

    build = get(data, "build", dict)
    cmake_args = get(build, "cmake_args", list, "build.")
    if not all(isinstance(a, str) for a in cmake_args):
        raise fail("build.cmake_args", "must be a list of strings")
    if any(re.match(r"-D?CMAKE_CXX_FLAGS|-march|-mcpu", a) for a in cmake_args):
        raise fail(
            "build.cmake_args", "must not set global CPU flags (kernels dispatch at run time)"
        )

    return Board(
        name=name,
        description=get(data, "description", str),
        arch=arch,
        cores=get(cpu, "cores", str, "cpu."),
        features=features,
        expected_isa=expected_isa,
        cpus=cpus,
        threads=threads,
        memory=tuple(tiers),
        power=power,
        cmake_args=tuple(cmake_args),
        build_notes=build.get("notes", ""),
        path=path,
    )


# --- this machine -------------------------------------------------------------------------------
PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _meminfo_bytes(meminfo: Path, key: str) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):  # missing, unreadable, "max", garbage
        return None


def _stat_value(path: Path, keys: tuple[str, ...]) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name in keys:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_memory(
    proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT
) -> tuple[int, int] | None:
    """(limit, available) bytes under the tightest memory limit on this process's cgroup and
    its ancestors (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`): available = limit -
    usage + the inactive page cache the cgroup can drop. None where no limit is set. A
    container started with `--memory 4g` reads the host's MemTotal and MemAvailable, but the
    kernel kills it at 4 GB."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    found: list[tuple[int, int]] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2 (in a container, "/" is its own)
            base, files = root, ("memory.max", "memory.current", ("inactive_file",))
        elif "memory" in controllers.split(","):  # v1
            base = root / "memory"
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes",
                     ("total_inactive_file", "inactive_file"))  # fmt: skip
        else:
            continue
        parts = [p for p in path.split("/") if p and p not in (".", "..")]
        for depth in range(len(parts), -1, -1):
            d = base.joinpath(*parts[:depth])
            limit = _read_int(d / files[0])
            if limit is None or limit >= 2**60:  # "max", or v1's "no limit" (about 2^63)
                continue
            usage = _read_int(d / files[1]) or 0
            cache = _stat_value(d / "memory.stat", files[2])
            found.append((limit, max(0, limit - usage + cache)))
    if not found:
        return None
    return min(limit for limit, _ in found), min(available for _, available in found)


def ram_gb(
    meminfo: Path = Path("/proc/meminfo"), cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT
) -> float | None:
    """Total RAM in GB (10^9 bytes) from /proc/meminfo, or the cgroup's memory limit where that
    is lower (a container); None where it is unavailable."""
    total = _meminfo_bytes(meminfo, "MemTotal")
    limited = cgroup_memory(cgroup, root)
    if limited is not None:
        total = limited[0] if total is None else min(total, limited[0])
    return None if total is None else total / 1e9


def mem_available_bytes(
    meminfo: Path = Path("/proc/meminfo"), cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT
) -> int | None:
    """Memory that can be allocated without swapping (MemAvailable), in bytes, or what the
    cgroup's limit leaves where that is less (a container); None where neither is known (not
    Linux)."""
    available = _meminfo_bytes(meminfo, "MemAvailable")
    limited = cgroup_memory(cgroup, root)
    if limited is not None:
        available = limited[1] if available is None else min(available, limited[1])
    return available


def _online_cpus() -> set[int] | None:
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return None


def big_cores(sysfs: Path = Path("/sys/devices/system/cpu")) -> list[int] | None:
    """The cores above the slowest cluster of a big.LITTLE CPU (all cores if they are alike).

    Uses `cpu_capacity` (arm64 kernels) or else `cpufreq/cpuinfo_max_freq`; None when neither
    is readable (the caller then uses every core).
    """
    values: dict[int, int] = {}
    for d in sysfs.glob("cpu[0-9]*"):
        for rel in ("cpu_capacity", "cpufreq/cpuinfo_max_freq"):
            try:
                values[int(d.name[3:])] = int((d / rel).read_text().strip())
                break
            except (OSError, ValueError):
                continue
    if not values:
        return None
    low = min(values.values())
    big = sorted(c for c, v in values.items() if v > low)
    return big or sorted(values)


# --- applying a profile ---------------------------------------------------------------------
@dataclass(frozen=True)
class BoardDefaults:
    """What a profile chooses on this machine: threads, cores, context, recipe, model size."""

    threads: int
    cpus: list[int] | None
    context: int
    recipe: str
    model: str


def board_defaults(board: Board, ram: float | None = None) -> BoardDefaults:
    """The profile's choices for this machine's RAM (read from /proc/meminfo when None)."""
    tier = board.tier(ram if ram is not None else ram_gb())
    cpus = board.resolve_cpus()
    return BoardDefaults(board.resolve_threads(cpus), cpus, tier.context, tier.recipe, tier.model)


def pin_to_cpus(cpus: Sequence[int] | None) -> None:
    """Restricts this process to `cpus`, so the native thread pool (made later) inherits it."""
    if cpus and hasattr(os, "sched_setaffinity"):
        # A container may hide some cores: then run where the OS lets us.
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)


def check_board(board: Board, cpu: dict[str, Any], available_isas: Sequence[str]) -> list[str]:
    """Differences between a profile and this machine's CPU report, as readable warnings."""
    warnings = []
    if cpu.get("arch") != board.arch:
        warnings.append(
            f"this CPU is {cpu.get('arch')}, the {board.name} profile expects {board.arch}"
        )
        return warnings
    missing = [f for f in board.features if f not in cpu.get("features", [])]
    if missing:
        warnings.append(f"CPU features missing for {board.name}: {', '.join(missing)}")
    if board.expected_isa not in ("best", *available_isas):
        warnings.append(
            f"the {board.name} profile expects kernel table '{board.expected_isa}', "
            f"available here: {', '.join(available_isas)}"
        )
    return warnings
