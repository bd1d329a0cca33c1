"""Exports under concurrency and kills: each export writes a temporary file of its own, the
published file is always one export's complete output, a killed export leaves the previous file
intact, and the next export removes what a killed one left behind."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from processes import KILLS, delays, qwen_edge, signal, signal_after, start

from qwen_edge.export import convert
from qwen_edge.formats.atomic_files import remove_stale_temporaries, write_atomically
from qwen_edge.formats.model_file import ModelFile, ModelFileWriter


def temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".tmp"))


def start_export(checkpoint: Path, out: Path) -> subprocess.Popen[str]:
    """`qwen-edge export` to `out`, returned once it has started (past Python's own startup,
    where a signal meets the interpreter rather than the export)."""
    proc = start(qwen_edge("export", checkpoint, "-o", out, "--quant", "q4"))
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line.startswith("exporting"), line + proc.communicate()[1]
    return proc


def test_concurrent_exports_to_one_path(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.qe"
    for round_ in range(3):
        procs = {
            recipe: start(qwen_edge("export", tiny_checkpoint, "-o", out, "--quant", recipe,
                                    "--json"))
            for recipe in ("q4", "q8")
        }  # fmt: skip
        reports = {}
        for recipe, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=600)
            assert proc.returncode == 0, stderr
            reports[recipe] = json.loads(stdout)
        with ModelFile(out, verify=True) as mf:  # complete, every CRC right
            recipe = mf.header["quant"]["recipe"]
            assert mf.size == reports[recipe]["file_bytes"], f"round {round_}"
        assert temporaries(tmp_path) == []


def test_threads_exporting_to_one_path_never_share_a_file(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m.qe"
    seen: list[Path] = []
    lock = threading.Lock()

    def progress(name: str, i: int, n: int) -> None:
        if i == 1:
            with lock:
                seen.extend(temporaries(tmp_path))

    threads = [
        threading.Thread(target=convert.export, args=(tiny_checkpoint, out, r),
                         kwargs={"progress": progress})
        for r in ("q8", "f16")
    ]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) >= 2  # two temporaries at once, named apart
    with ModelFile(out, verify=True) as mf:
        assert mf.header["quant"]["recipe"] in ("q8", "f16")
    assert temporaries(tmp_path) == []


@pytest.fixture(scope="module")
def previous(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A complete model file that each killed export tries to replace."""
    path = tmp_path_factory.mktemp("previous") / "m.qe"
    convert.export(tiny_checkpoint, path, "q8")
    return path.read_bytes()


def test_sigkill_during_export_keeps_the_previous_file(
    tiny_checkpoint: Path, tmp_path: Path, previous: bytes
) -> None:
    out = tmp_path / "m.qe"
    out.write_bytes(previous)
    seed, left_behind = 3, 0
    for i, delay in enumerate(delays(KILLS, 0.0, 3.0, seed)):
        proc = start_export(tiny_checkpoint, out)
        ended = signal_after(proc, signal.SIGKILL, delay)
        if ended.code == 0:  # finished before the kill: publish the old file again
            out.write_bytes(previous)
            continue
        assert ended.code == -signal.SIGKILL, f"seed {seed} try {i}: " + ended.describe()
        if out.read_bytes() != previous:
            # Killed after publishing (while it printed its summary): the file must then be
            # that export's complete output.
            with ModelFile(out, verify=True) as mf:
                assert mf.header["quant"]["recipe"] == "q4", f"seed {seed} try {i}"
            out.write_bytes(previous)
        left_behind += len(temporaries(tmp_path))
        removed = remove_stale_temporaries(out)  # what the next export does first
        assert temporaries(tmp_path) == [], removed
    # The kills did land inside exports (not all before the first write).
    assert left_behind > 0
    convert.export(tiny_checkpoint, out, "q4")
    with ModelFile(out, verify=True) as mf:
        assert mf.header["quant"]["recipe"] == "q4"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_during_export_clean_up(
    signum: int, tiny_checkpoint: Path, tmp_path: Path, previous: bytes
) -> None:
    out = tmp_path / "m.qe"
    out.write_bytes(previous)
    seed, stopped = 5, 0
    # The first try signals as soon as the export has started, so at least one is stopped even
    # on a machine fast enough to finish every export before the random moments.
    for i, delay in enumerate([0.0, *delays(max(3, KILLS // 4), 0.0, 3.0, seed)]):
        proc = start_export(tiny_checkpoint, out)
        ended = signal_after(proc, signum, delay)
        if ended.code == 0:  # finished before the signal
            out.write_bytes(previous)
            continue
        stopped += 1
        assert ended.code == 128 + signum and ended.crash() is None, (
            f"seed {seed} try {i}: " + ended.describe()
        )
        assert out.read_bytes() == previous
        assert temporaries(tmp_path) == []
    assert stopped > 0  # the signals did stop exports (an ignored signal lets all finish)


def test_the_next_writer_removes_stale_temporaries_only(tmp_path: Path) -> None:
    out = tmp_path / "m.qe"
    dead = tmp_path / f".m.qe.{2**22 + 12345}.abcd1234.tmp"  # above Linux's pid_max default
    dead.write_bytes(b"half a file")
    alive = tmp_path / f".m.qe.{os.getppid()}.abcd1234.tmp"  # a live process's: kept
    alive.write_bytes(b"someone else's export")
    other = tmp_path / ".n.qe.1.abcd1234.tmp"  # another destination's: kept
    other.write_bytes(b"")
    with ModelFileWriter(out, {"arch": "x"}, []) as w:
        assert w.stale_removed == [dead]
    assert not dead.exists() and alive.exists() and other.exists()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() makes it, not mkstemp's 0600


def test_side_files_are_written_atomically_by_concurrent_writers(tmp_path: Path) -> None:
    """The small files exports and benchmarks write beside a model (tokenizer.json, genai and
    tokenizer configs, bench JSON, reports) once shared `<name>.tmp`: concurrent writers then
    published each other's half-written file or failed renaming a temporary file that another
    writer had already renamed."""
    out = tmp_path / "tokenizer.json"
    stale = tmp_path / f".tokenizer.json.{2**22 + 7}.abcd1234.tmp"  # a killed writer's
    stale.write_bytes(b"half")
    payloads = [bytes([i]) * 300_000 for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda p: write_atomically(out, p), payloads * 4))
    assert out.read_bytes() in payloads
    assert temporaries(tmp_path) == []
    with pytest.raises(TypeError):  # a failure while writing: the old file stays, no temporary
        write_atomically(out, "not bytes")  # type: ignore[arg-type]
    assert out.read_bytes() in payloads and temporaries(tmp_path) == []
