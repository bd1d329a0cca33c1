# SPDX-License-Identifier: Apache-2.0
"""`tools/compare_peers.py export`'s plumbing, without llama.cpp: the children's progress is
passed on and a failure names its last lines, a step that would not fit on the disk stops
before writing, and a failed conversion leaves no intermediate file behind. (The timings
themselves need the peers and are not tested.)"""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from tool_scripts import load_tool

from qwen_edge.backends import native
from qwen_edge.export import presets
from qwen_edge.export.convert import export
from qwen_edge.export.random_checkpoint import write_random_checkpoint


def _tool():  # type: ignore[no-untyped-def]
    return load_tool("compare_peers")


def test_timed_passes_on_progress_and_reports_failure() -> None:
    tool = _tool()
    # a tqdm-like bar (\r updates), a log line, then a failure
    child = (
        "import sys\n"
        "sys.stderr.write('bar 1/3\\rbar 2/3\\rbar 3/3\\n'); sys.stderr.write('done part\\n')\n"
        "sys.stderr.write('Traceback: disk full'); sys.exit(3)\n"
    )
    log = io.StringIO()
    with pytest.raises(RuntimeError, match="exit 3") as err:
        tool.timed([sys.executable, "-c", child], None, "convert", every_s=0.0, log=log)
    assert "disk full" in str(err.value) and "bar 3/3" in str(err.value)
    shown = log.getvalue().splitlines()
    assert [line.split("] ")[1] for line in shown] == ["bar 1/3", "bar 2/3", "bar 3/3", "done part"]
    assert all(line.startswith("  [convert ") for line in shown)


def test_timed_throttles_and_measures() -> None:
    tool = _tool()
    child = "import sys\nfor i in range(1000): sys.stderr.write(f'tensor {i}\\n')\n"
    log = io.StringIO()
    r = tool.timed([sys.executable, "-c", child], None, "quantize", every_s=3600.0, log=log)
    # the first line, then the last one held back by the throttle
    assert [line.split("] ")[1] for line in log.getvalue().splitlines()] == [
        "tensor 0",
        "tensor 999",
    ]
    assert r["wall_s"] > 0 and r["cpu_s"] > 0 and r["peak_rss_bytes"] > 1e6


def test_disk_needed_and_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tool = _tool()
    (tmp_path / "model-00001-of-00001.safetensors").write_bytes(b"\0" * 2000)
    weights = tool.checkpoint_weights(tmp_path)
    assert weights == 1000
    a = SimpleNamespace(recipe="q4", llama_outtype="q8_0", llama_type="Q4_0")
    assert tool.disk_needed(weights, "native", a) == 625  # 5 bits
    assert tool.disk_needed(weights, "llama", a) == 1625  # q8_0 and Q4_0 side by side
    a.llama_outtype = "bf16"
    assert tool.disk_needed(weights, "llama", a) == 2562
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(tool.shutil, "disk_usage", lambda _: usage._replace(free=2000))
    tool.check_disk(tmp_path, 1999, "fits")
    with pytest.raises(SystemExit, match=r"needs about .* GB .* --llama-outtype q8_0"):
        tool.check_disk(tmp_path, 2001, "rep 0 llama")


def _export_args(tmp_path: Path) -> tuple[Path, list[str]]:
    """A 2048-weight "checkpoint" and a stand-in llama.cpp source tree (the converter is
    written by each test)."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"\0" * 4096)
    src = tmp_path / "src" / "vendor" / "llama.cpp"
    src.mkdir(parents=True)
    argv = ["export", "--checkpoint", str(ckpt), "--llama-src", str(tmp_path / "src"),
            "--workdir", str(tmp_path / "out"), "--engines", "llama", "--llama-type", "Q4_0",
            "--progress-every", "0"]  # fmt: skip
    return src / "convert_hf_to_gguf.py", argv


def test_failed_conversion_leaves_no_partial_file(tmp_path: Path) -> None:
    tool = _tool()
    converter, argv = _export_args(tmp_path)
    # a converter that writes half its output, then fails
    converter.write_text(
        "import sys\n"
        "out = sys.argv[sys.argv.index('--outfile') + 1]\n"
        "open(out, 'wb').write(b'GGUF' * 100)\n"
        "sys.stderr.write('INFO writing blk.0\\nOSError: No space left on device\\n')\n"
        "sys.exit(1)\n"
    )
    with pytest.raises(RuntimeError, match="No space left on device"):
        tool.main(argv)
    assert list((tmp_path / "out").iterdir()) == []


def test_export_stops_before_a_step_that_would_not_fit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tool = _tool()
    converter, argv = _export_args(tmp_path)
    converter.write_text("raise SystemExit('the converter must not run')\n")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(tool.shutil, "disk_usage", lambda _: usage._replace(free=1000))
    # 2048 weights in bf16 -> (16 + 4.5) bits each = 5248 bytes > 1000 free
    with pytest.raises(SystemExit, match="rep 0 llama needs about"):
        tool.main(argv)
    # --skip-disk-check lets it start (and the fake converter then fails)
    with pytest.raises(RuntimeError, match="the converter must not run"):
        tool.main([*argv, "--skip-disk-check"])


@pytest.mark.skipif(not native.available(), reason="the native core is not built")
def test_run_records_cpu_rates_and_load(tmp_path: Path) -> None:
    """`run` with our engine alone on a tiny model: the record carries the load average and
    the rates per CPU-second beside the wall-clock ones (the fair figures on a busy machine)."""
    ckpt = write_random_checkpoint(tmp_path / "ckpt", presets.hf_config("tiny", vocab_size=1000))
    model = tmp_path / "tiny.qe"
    export(ckpt, model, "q8")
    tool = _tool()
    out = tmp_path / "run.json"
    argv = ["run", "--threads", "1", "--prompt", "8", "--decode", "2", "--repetitions", "2",
            "--warmup", "0", "--qwen-edge", f"q8={model}", "--json", str(out)]  # fmt: skip
    assert tool.main(argv) == 0
    rec = json.loads(out.read_text())
    assert len(rec["load_average"]["start"]) == 3 and len(rec["load_average"]["end"]) == 3
    (row,) = rec["rows"]
    assert row["engine"] == "qwen-edge" and len(row["per_repetition"]) == 2
    for key in ("prefill_tok_per_cpu_s", "decode_tok_per_cpu_s"):
        assert row[key]["mean"] > 0
    r = row["per_repetition"][0]
    assert r["ttft_cpu_s"] > 0 and r["decode_cpu_s"] > 0
