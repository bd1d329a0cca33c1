"""Board profiles: every bundled profile validates, defaults apply, sensors parse, `--board`."""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import pytest

from qwen_edge.cli import main
from qwen_edge.cli.common import apply_board
from qwen_edge.errors import ConfigError
from qwen_edge.hardware import boards

BOARDS = ["android-termux", "jetson-orin-nano", "rpi4", "rpi5", "x86-gateway"]


def test_every_profile_loads() -> None:
    assert boards.list_boards() == BOARDS
    for name in BOARDS:
        b = boards.load_board(name)
        assert b.name == name and b.memory[0].min_ram_gb == 0
        # A profile's kernel table must be one its features allow.
        if b.expected_isa == "neon_dotprod":
            assert "dotprod" in b.features
        if b.arch == "aarch64":
            assert "neon" in b.features


def test_tiers_follow_ram() -> None:
    b = boards.load_board("rpi5")
    assert b.tier(None) == b.memory[0]
    assert b.tier(1.9).model == "0.8b"
    assert (b.tier(3.9).model, b.tier(3.9).context) == ("2b", 8192)
    assert (b.tier(7.8).model, b.tier(7.8).context) == ("4b", 32768)
    assert (b.tier(16.7).model, b.tier(16.7).recipe) == ("9b", "q4")


# What /proc/meminfo's MemTotal reads as (GB, as `boards.ram_gb` reports it) on real boards:
# less than the label, by the firmware's and (Jetson) the GPU carve-out's share.
EIGHT_GB = {"rpi5": 8.3, "jetson-orin-nano": 7.8, "x86-gateway": 8.2, "android-termux": 7.5}
SIXTEEN_GB = {"rpi5": 16.6, "x86-gateway": 16.4, "android-termux": 15.3}


@pytest.mark.parametrize("name,ram", sorted(EIGHT_GB.items()))
def test_eight_gb_boards_choose_the_4b(name: str, ram: float) -> None:
    assert boards.load_board(name).tier(ram).model == "4b"


@pytest.mark.parametrize("name,ram", sorted(SIXTEEN_GB.items()))
def test_sixteen_gb_boxes_choose_the_9b(name: str, ram: float) -> None:
    assert (boards.load_board(name).tier(ram).model, boards.load_board(name).tier(ram).recipe) == (
        "9b",
        "q4",
    )


def _tier_bytes(model: str, recipe: str, context: int, threads: int) -> int:
    """Weights as the recipe stores them + the state for `context` (f16 KV) + 0.5 GB for the
    interpreter and runtime."""
    from qwen_edge.backends.native import available, state_bytes_for
    from qwen_edge.export import presets
    from qwen_edge.export.convert import plan_formats
    from qwen_edge.formats.config import ModelConfig
    from qwen_edge.formats.model_file import TensorSpec

    if not available():
        pytest.skip("the state size comes from the native core")
    cfg = ModelConfig.from_hf(presets.hf_config(model))
    shapes = cfg.text_tensor_shapes()
    formats = plan_formats(shapes, recipe)
    weights = sum(TensorSpec(n, formats[n], s).nbytes for n, s in shapes.items())
    return weights + state_bytes_for(cfg, context, "f16", threads=threads) + 500_000_000


@pytest.mark.parametrize("name", boards.list_boards())
def test_every_tier_fits_its_ram(name: str) -> None:
    """A tier's model, recipe and context take at most 85 % of the least RAM it applies to (2 GB
    for the first tier), leaving the rest to the OS."""
    b = boards.load_board(name)
    threads = b.threads or 4
    for t in b.memory:
        ram = max(t.min_ram_gb, 2.0) * 1e9
        need = _tier_bytes(t.model, t.recipe, t.context, threads)
        assert need <= 0.85 * ram, (name, t, need / 1e9)


def test_the_next_size_up_does_not_fit_where_4b_and_9b_start() -> None:
    """At the RAM where the 4B tier starts the 9B would not fit, so 4B is the largest there."""
    for name in ("rpi5", "jetson-orin-nano", "x86-gateway"):
        b = boards.load_board(name)
        t = next(t for t in b.memory if t.model == "4b")
        assert _tier_bytes("9b", t.recipe, t.context, b.threads or 4) > 0.85 * t.min_ram_gb * 1e9


def _profile(tmp_path: Path, **changes: object) -> Path:
    data = json.loads(boards.load_board("rpi5").path.read_text())
    data = copy.deepcopy(data)
    data["name"] = "custom"
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        obj = data
        for p in parents:
            obj = obj[p]
        if value is None:
            del obj[key]
        else:
            obj[key] = value
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(data))
    return path


def test_a_profile_file_by_path(tmp_path: Path) -> None:
    b = boards.load_board(str(_profile(tmp_path, threads=2)))
    assert b.name == "custom" and b.threads == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threads": None}, "field 'threads' is missing"),
        ({"threads": "4"}, "field 'threads' has the wrong type"),
        ({"threads": -1}, "field 'threads' must be >= 0"),
        ({"schema": 2}, "this qwen-edge reads schema 1"),
        ({"arch": "riscv64"}, "field 'arch' is 'riscv64'"),
        ({"cpu__features": ["neon", "sve9"]}, "field 'cpu.features' is 'sve9'"),
        ({"cpus": [0, -1]}, "field 'cpus' must be a list"),
        ({"memory": []}, "field 'memory' needs at least one tier"),
        (
            {"memory": [{"min_ram_gb": 0, "model": "0.8b", "recipe": "q3", "context": 4096}]},
            "field 'memory[0].recipe' is 'q3'",
        ),
        (
            {
                "memory": [
                    {"min_ram_gb": 0, "model": "0.8b", "recipe": "q4", "context": 4096},
                    {"min_ram_gb": 0, "model": "2b", "recipe": "q4", "context": 4096},
                ]
            },
            "'memory[1].min_ram_gb' must increase",
        ),
        ({"power__kind": "hwmon"}, "field 'power.path' is missing"),
        ({"power__kind": "meter"}, "field 'power.kind' is 'meter'"),
        ({"build__cmake_args": ["-DCMAKE_CXX_FLAGS=-march=native"]}, "global CPU flags"),
    ],
)
def test_invalid_profiles_name_the_field(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        boards.load_board(str(_profile(tmp_path, **change)))


def test_name_must_match_file_and_unknown_board(tmp_path: Path) -> None:
    path = _profile(tmp_path)
    path.rename(tmp_path / "other.json")
    with pytest.raises(ConfigError, match="is 'custom' but the file is other.json"):
        boards.load_board(str(tmp_path / "other.json"))
    with pytest.raises(ConfigError, match="unknown board 'pi9'; known boards: android-termux"):
        boards.load_board("pi9")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read JSON"):
        boards.load_board(str(tmp_path / "bad.json"))


def _cpu_tree(root: Path, values: list[int], file: str) -> Path:
    for i, v in enumerate(values):
        d = root / f"cpu{i}" / Path(file).parent
        d.mkdir(parents=True, exist_ok=True)
        (root / f"cpu{i}" / file).write_text(f"{v}\n")
    (root / "cpufreq").mkdir(exist_ok=True)  # not a cpuN directory: ignored
    return root


def test_big_cores(tmp_path: Path) -> None:
    # A phone: 4 LITTLE, 3 big, 1 prime by capacity; by max frequency; and a uniform CPU.
    caps = _cpu_tree(tmp_path / "a", [160, 160, 160, 160, 750, 750, 750, 1024], "cpu_capacity")
    assert boards.big_cores(caps) == [4, 5, 6, 7]
    freqs = [1_800_000] * 2 + [2_400_000] * 6
    assert boards.big_cores(_cpu_tree(tmp_path / "b", freqs, "cpufreq/cpuinfo_max_freq")) == [
        2,
        3,
        4,
        5,
        6,
        7,
    ]
    assert boards.big_cores(_cpu_tree(tmp_path / "c", [1024] * 4, "cpu_capacity")) == [0, 1, 2, 3]
    assert boards.big_cores(tmp_path / "missing") is None


def test_every_profile_names_a_sensor_kind_that_is_read() -> None:
    # tests/hardware/test_power.py reads each of these kinds from a fake tree or a fake command.
    kinds = {name: boards.load_board(name).power.kind for name in BOARDS}
    assert kinds == {
        "android-termux": "battery",
        "jetson-orin-nano": "hwmon",
        "rpi4": "none",
        "rpi5": "pmic",
        "x86-gateway": "rapl",
    }
    assert boards.load_board("jetson-orin-nano").power.label == "VDD_IN"


def test_apply_board_fills_only_unset_options() -> None:
    args = argparse.Namespace(board="rpi5", threads=None, context=1024, quant=None)
    b = apply_board(args, ram=8.0, set_affinity=False)
    assert b is not None and b.name == "rpi5"
    assert args.context == 1024  # given by the user: kept
    assert args.quant == "q4" and args.threads == 4
    assert not hasattr(args, "model_size")  # not an option of this command: not added
    assert apply_board(argparse.Namespace(board=None)) is None

    phone = argparse.Namespace(board="android-termux", threads=None)
    apply_board(phone, ram=12.0, set_affinity=False)
    # threads 0 in the profile: one per selected (big) core, or per core where sysfs is silent.
    assert phone.threads == (len(phone.board_cpus) if phone.board_cpus else os.cpu_count())


def test_cli_board_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boards"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in BOARDS)
    assert main(["boards", "jetson-orin-nano"]) == 0
    assert "VDD_IN" in capsys.readouterr().out
    assert main(["info", "--json", "--board", "x86-gateway"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["board"] == "x86-gateway" and report["board_threads"] == 4
    assert main(["info", "--board", "pi9"]) == 1
    assert "unknown board 'pi9'" in capsys.readouterr().err


def test_run_and_chat_take_the_board() -> None:
    from qwen_edge.cli import build_parser

    for argv in (
        ["run", "m.qe", "-p", "hi", "--board", "rpi4"],
        ["chat", "m.qe", "--board", "rpi4"],
    ):
        args = build_parser().parse_args(argv)
        assert args.threads is None and args.context is None
        apply_board(args, ram=4.0, set_affinity=False)
        assert (args.threads, args.context) == (4, 8192)
    args = build_parser().parse_args(
        ["run", "m.qe", "-p", "hi", "--board", "rpi4", "--threads", "2"]
    )
    apply_board(args, ram=4.0, set_affinity=False)
    assert args.threads == 2  # the user's value wins


# --- memory limits of a container (cgroups) -----------------------------------------------------
GIB = 2**30


def _files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_cgroup_v2_limit_on_an_ancestor(tmp_path: Path) -> None:
    # A service inside a slice limited to 4 GiB, 3 GiB used of which 0.5 GiB inactive page
    # cache: 1.5 GiB can still be had; the service's own `max` and a looser limit above do not
    # count; MemAvailable and MemTotal give way to the limit.
    proc, root = tmp_path / "cgroup", tmp_path / "sys"
    proc.write_text("0::/slice/service\n")
    _files(root, {
        "slice/memory.max": f"{4 * GIB}\n", "slice/memory.current": f"{3 * GIB}\n",
        "slice/memory.stat": f"anon 100\ninactive_file {GIB // 2}\nactive_file 7\n",
        "slice/service/memory.max": "max\n", "slice/service/memory.current": "5\n",
        "memory.max": f"{64 * GIB}\n", "memory.current": "0\n",
    })  # fmt: skip
    assert boards.cgroup_memory(proc, root) == (4 * GIB, 3 * GIB // 2)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: {16 * GIB // 1024} kB\nMemAvailable: {12 * GIB // 1024} kB\n")
    assert boards.mem_available_bytes(meminfo, proc, root) == 3 * GIB // 2
    assert boards.ram_gb(meminfo, proc, root) == 4 * GIB / 1e9
    # A cgroup over its limit (page cache not yet dropped) has nothing left, not a negative.
    _files(root, {"slice/memory.current": f"{5 * GIB}\n", "slice/memory.stat": ""})
    assert boards.cgroup_memory(proc, root) == (4 * GIB, 0)


def test_cgroup_v1_limit_and_no_limit(tmp_path: Path) -> None:
    proc, root = tmp_path / "cgroup", tmp_path / "sys"
    proc.write_text("12:cpu,cpuacct:/x\n4:memory:/x\n0::/\n")
    _files(root, {
        "memory/x/memory.limit_in_bytes": f"{2 * GIB}\n",
        "memory/x/memory.usage_in_bytes": f"{GIB}\n",
        "memory/x/memory.stat": "cache 9\ntotal_inactive_file 100\n",
    })  # fmt: skip
    assert boards.cgroup_memory(proc, root) == (2 * GIB, GIB + 100)
    # v1's "no limit" (about 2^63), a limit file that is garbage or missing: no limit known.
    _files(root, {"memory/x/memory.limit_in_bytes": "9223372036854771712\n"})
    assert boards.cgroup_memory(proc, root) is None
    _files(root, {"memory/x/memory.limit_in_bytes": "lots\n"})
    assert boards.cgroup_memory(proc, root) is None
    assert boards.cgroup_memory(tmp_path / "missing", root) is None
    # The path cannot climb out of the hierarchy.
    proc.write_text("4:memory:/../../etc\n")
    assert boards.cgroup_memory(proc, root) is None
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: {8 * GIB // 1024} kB\nMemAvailable: {GIB // 1024} kB\n")
    assert boards.mem_available_bytes(meminfo, proc, root) == GIB
