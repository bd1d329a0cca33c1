"""Random checkpoints made in chunks of rows and written as hub-style shards: the same values as
made whole, read back tensor by tensor by the checkpoint reader and the exporter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qwen_edge.export import presets
from qwen_edge.export.convert import export
from qwen_edge.export.random_checkpoint import (
    random_tensor,
    random_tensor_chunks,
    tiled_tensor_chunks,
    write_random_checkpoint,
)
from qwen_edge.formats.checkpoint import Checkpoint
from qwen_edge.formats.quant import bf16_to_f32
from qwen_edge.formats.safetensors import write_safetensors


@pytest.mark.parametrize(
    "name,shape",
    [
        ("embed_tokens.weight", (1000, 64)),
        ("layers.0.mlp.down_proj.weight", (37, 96)),
        ("layers.0.linear_attn.A_log", (16,)),
        ("layers.0.input_layernorm.weight", (64,)),
        ("layers.0.linear_attn.conv1d.weight", (40, 1, 4)),
    ],
)
def test_chunks_equal_whole(name: str, shape: tuple[int, ...]) -> None:
    whole = random_tensor(name, shape, seed=3)
    parts = list(random_tensor_chunks(name, shape, seed=3, chunk_rows=7))
    assert np.array_equal(np.concatenate(parts), whole)
    assert all(p.dtype == np.float32 for p in parts)


def test_sharded_checkpoint_reads_like_one_file(tmp_path: Path) -> None:
    cfg = presets.hf_config("tiny")
    one = write_random_checkpoint(tmp_path / "one", cfg, seed=1)
    sharded = write_random_checkpoint(tmp_path / "sharded", cfg, seed=1, shard_bytes=200_000)
    files = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(files)
    assert index["metadata"]["total_size"] == sum(
        (sharded / f).stat().st_size for f in files
    ) - sum(_header_bytes(sharded / f) for f in files)
    a, b = Checkpoint(one), Checkpoint(sharded)
    names = list(a.config.text_tensor_shapes())
    for name in names:
        assert np.array_equal(a.read(name), b.read(name)), name
    out1, out2 = export(one, tmp_path / "one.qe", "q4"), export(sharded, tmp_path / "s.qe", "q4")
    assert out1.weight_bytes == out2.weight_bytes and out1.file_bytes == out2.file_bytes


def _header_bytes(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def test_chunked_writer_checks_the_rows(tmp_path: Path) -> None:
    rows = [np.zeros((3, 4), np.float32), np.zeros((2, 4), np.float32)]
    write_safetensors(tmp_path / "ok.safetensors", [("w", "F32", (5, 4))], [iter(rows)])
    with pytest.raises(ValueError, match="chunks hold 5 rows"):
        write_safetensors(tmp_path / "short.safetensors", [("w", "F32", (6, 4))], [iter(rows)])
    with pytest.raises(ValueError, match="does not fit"):
        write_safetensors(
            tmp_path / "bad.safetensors", [("w", "F32", (5, 4))], [iter([np.zeros((5, 3))])]
        )


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_tiled_rows_come_from_a_pool_of_the_same_distribution(
    monkeypatch: pytest.MonkeyPatch, dtype: str
) -> None:
    import qwen_edge.export.random_checkpoint as rc

    monkeypatch.setattr(rc, "TILED_POOL_VALUES", 64 * 50)
    name, shape = "layers.0.mlp.down_proj.weight", (1000, 64)
    parts = list(tiled_tensor_chunks(name, shape, 5, dtype, chunk_rows=300))
    assert [len(p) for p in parts] == [300, 300, 300, 100]
    raw = np.concatenate(parts)
    w = bf16_to_f32(raw) if dtype == "bf16" else raw
    assert raw.dtype == (np.uint16 if dtype == "bf16" else np.float32) and w.shape == shape
    distinct = np.unique(np.abs(w), axis=0)
    assert len(distinct) == 50  # every row is a pool row, up to its sign
    assert len(np.unique(w, axis=0)) > 50  # with both signs
    exact = random_tensor(name, shape, 5)
    assert abs(w.std() / exact.std() - 1) < 0.1  # the same scale as the exact weights
    # small tensors are drawn exactly
    small = np.concatenate(
        list(tiled_tensor_chunks("layers.0.input_layernorm.weight", (64,), 5, "f32"))
    )
    assert np.array_equal(small, random_tensor("layers.0.input_layernorm.weight", (64,), 5))


def test_tiled_checkpoint_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qwen_edge.export.random_checkpoint as rc

    monkeypatch.setattr(rc, "TILED_POOL_VALUES", 4096)
    ck = write_random_checkpoint(tmp_path / "t", presets.hf_config("tiny"), seed=1, tiled=True)
    exact = write_random_checkpoint(tmp_path / "e", presets.hf_config("tiny"), seed=1)
    a, b = Checkpoint(ck), Checkpoint(exact)
    emb = "embed_tokens.weight"
    assert a.read(emb).shape == b.read(emb).shape and not np.array_equal(a.read(emb), b.read(emb))
    out = export(ck, tmp_path / "t.qe", "q4")
    assert out.weight_bytes == export(exact, tmp_path / "e.qe", "q4").weight_bytes
