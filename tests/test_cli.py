"""The command line: `inspect` on generated checkpoints of every preset size, errors, `info`."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qwen_edge import presets
from qwen_edge.cli import main
from qwen_edge.config import ModelConfig
from qwen_edge.export.demo import mtp_tensor_shapes

# Spec §1.5, exact.
SPEC = {
    "0.8b": {"embeddings": 254_279_680, "text_total": 752_393_024, "mtp": 20_452_864,
             "linear_attention": 387_996_480, "full_attention": 110_115_840},
    "2b": {"embeddings": 508_559_360, "text_total": 1_881_825_088, "mtp": 60_828_160,
           "linear_attention": 1_058_663_232, "full_attention": 314_600_448},
}  # fmt: skip


def write_sparse_checkpoint(out: Path, preset: str, layout: str) -> Path:
    """A full-size checkpoint whose tensor data is a hole in a sparse file: real headers, real
    shapes and sizes, no disk or time spent on weights (inspect reads only headers)."""
    hf = presets.hf_config(preset)
    cfg = ModelConfig.from_hf(hf)
    prefix = "model.language_model." if layout == "wrapper" else "model."
    shapes = {prefix + n: s for n, s in cfg.text_tensor_shapes().items()}
    if layout == "wrapper":
        shapes.update(mtp_tensor_shapes(cfg))
    header, offset = {}, 0
    for name, shape in shapes.items():
        dtype = "F32" if name.endswith(("A_log", "linear_attn.norm.weight")) else "BF16"
        nbytes = int(np.prod(shape)) * (4 if dtype == "F32" else 2)
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header).encode()
    out.mkdir()
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)
    config = hf if layout == "wrapper" else presets.text_only_config(hf)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("preset", ["0.8b", "2b"])
@pytest.mark.parametrize("layout", ["wrapper", "text"])
def test_inspect_real_sizes(
    preset: str, layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = write_sparse_checkpoint(tmp_path / preset, preset, layout)
    assert main(["inspect", str(ckpt), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    par, want = s["parameters"], SPEC[preset]
    assert s["layout"] == layout
    assert par["embeddings"] == want["embeddings"]
    assert par["text_total"] == want["text_total"]
    assert par["linear_attention"]["total"] == want["linear_attention"]
    assert par["full_attention"]["total"] == want["full_attention"]
    assert par["mtp"]["parameters"] == (want["mtp"] if layout == "wrapper" else 0)
    assert s["text_size_bytes"]["16"] == 2 * want["text_total"]
    assert s["text_size_bytes"]["4.5"] == -(-want["text_total"] * 9 // 16)

    assert main(["inspect", str(ckpt)]) == 0
    text = capsys.readouterr().out
    assert f"{want['text_total']:,}" in text
    assert "LLLF" * 6 in text


def test_inspect_tiny_both_layouts(
    tiny_checkpoint: Path, tiny_text_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    totals = []
    for ckpt in (tiny_checkpoint, tiny_text_checkpoint):
        assert main(["inspect", str(ckpt), "--json"]) == 0
        totals.append(json.loads(capsys.readouterr().out)["parameters"]["text_total"])
    assert totals[0] == totals[1] > 0


def test_inspect_error_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(presets.hf_config("tiny")))
    proc = subprocess.run(
        [sys.executable, "-m", "qwen_edge", "inspect", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("qwen-edge: error: ")
    assert "no model.safetensors" in proc.stderr and "Traceback" not in proc.stderr


def test_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["available_isas"][-1] == "ref"
    assert report["selected_isa"] in report["available_isas"]


def test_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--dir", str(tmp_path / "demo"), "--tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out and "greedy ids" in out
