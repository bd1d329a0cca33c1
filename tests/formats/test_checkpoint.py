"""The checkpoint reader: both layouts, shards, dtypes, and a clear error for each broken case."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qwen_edge.errors import CheckpointError, ConfigError
from qwen_edge.export import presets
from qwen_edge.export.random_checkpoint import random_tensor, write_random_checkpoint
from qwen_edge.formats.checkpoint import Checkpoint
from qwen_edge.formats.safetensors import SafetensorsFile, write_safetensors

Entries = list[tuple[str, str, np.ndarray]]


def rewrite(
    src: Path, dst: Path, edit: Callable[[Entries], Entries], name: str = "model.safetensors"
) -> Path:
    """Copies a single-file checkpoint, passing its (name, dtype, raw array) list through `edit`."""
    shutil.copytree(src, dst)
    f = SafetensorsFile(src / "model.safetensors")
    entries = edit([(n, i.dtype, np.array(f.read_raw(n))) for n, i in f.tensors.items()])
    (dst / "model.safetensors").unlink()
    write_safetensors(
        dst / name, [(n, d, a.shape) for n, d, a in entries], (a for _, _, a in entries)
    )
    return dst


def test_wrapper_layout(tiny_checkpoint: Path) -> None:
    ckpt = Checkpoint(tiny_checkpoint)
    assert ckpt.layout == "wrapper"
    assert len(ckpt.groups.mtp) == 15
    assert set(ckpt.groups.text) == set(ckpt.config.text_tensor_shapes())
    # bf16 widens exactly: the stored value is the generator's value rounded to bf16.
    want = random_tensor("layers.0.mlp.up_proj.weight", (192, 64), seed=0)
    got = ckpt.read("layers.0.mlp.up_proj.weight")
    assert got.dtype == np.float32 and got.shape == (192, 64)
    assert np.max(np.abs(got - want) / np.abs(want).clip(1e-30)) <= 2**-8
    # A_log is stored in fp32, as on the hub: bit-exact.
    assert ckpt.info("layers.0.linear_attn.A_log").dtype == "F32"
    np.testing.assert_array_equal(
        ckpt.read("layers.0.linear_attn.A_log"),
        random_tensor("layers.0.linear_attn.A_log", (4,), 0),
    )


def test_text_layout_reads_the_same_weights(
    tiny_checkpoint: Path, tiny_text_checkpoint: Path
) -> None:
    a, b = Checkpoint(tiny_checkpoint), Checkpoint(tiny_text_checkpoint)
    assert b.layout == "text" and not b.groups.mtp
    assert a.config == b.config
    for name in ("embed_tokens.weight", "layers.3.self_attn.q_proj.weight", "norm.weight"):
        np.testing.assert_array_equal(a.read(name), b.read(name))


@pytest.mark.parametrize("dtype", ["f16", "f32"])
def test_other_dtypes(tmp_path: Path, dtype: str) -> None:
    ckpt = Checkpoint(write_random_checkpoint(tmp_path, presets.hf_config("tiny"), dtype=dtype))
    want = random_tensor("layers.1.linear_attn.in_proj_qkv.weight", (128, 64), seed=0)
    got = ckpt.read("layers.1.linear_attn.in_proj_qkv.weight")
    if dtype == "f32":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32))


def test_shards_with_index(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Tensors split over two shards named as on the hub, located through the index."""
    dst = tmp_path / "sharded"
    shutil.copytree(tiny_checkpoint, dst)
    f = SafetensorsFile(dst / "model.safetensors")
    names = list(f.tensors)
    shards = {
        "model.safetensors-00001-of-00002.safetensors": names[: len(names) // 2],
        "model.safetensors-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    weight_map = {}
    for shard, part in shards.items():
        arrays = [np.array(f.read_raw(n)) for n in part]
        write_safetensors(
            dst / shard,
            [(n, f.tensors[n].dtype, a.shape) for n, a in zip(part, arrays, strict=True)],
            arrays,
        )
        weight_map.update({n: shard for n in part})
    f.close()
    (dst / "model.safetensors").unlink()
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ckpt = Checkpoint(dst)
    assert len(ckpt.files) == 2
    np.testing.assert_array_equal(
        ckpt.read("layers.3.mlp.down_proj.weight"),
        Checkpoint(tiny_checkpoint).read("layers.3.mlp.down_proj.weight"),
    )


def test_vision_and_mtp_are_recognised_and_skipped(tiny_checkpoint: Path, tmp_path: Path) -> None:
    vision = [("model.visual.blocks.0.attn.qkv.weight", "BF16", np.zeros((96, 32), np.uint16)),
              ("model.visual.merger.linear_fc2.bias", "BF16", np.zeros(64, np.uint16))]  # fmt: skip
    ckpt = Checkpoint(rewrite(tiny_checkpoint, tmp_path / "v", lambda e: e + vision))
    summary = ckpt.summary()["parameters"]
    assert summary["vision"] == {"tensors": 2, "parameters": 96 * 32 + 64}
    assert summary["mtp"]["tensors"] == 15
    assert "model.visual.blocks.0.attn.qkv.weight" not in ckpt.groups.text


def test_tied_checkpoint_may_carry_a_head(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """transformers ties by config and ignores a stored lm_head; so does the reader."""
    head = [("lm_head.weight", "BF16", np.zeros((248320, 64), np.uint16))]
    ckpt = Checkpoint(rewrite(tiny_checkpoint, tmp_path / "h", lambda e: e + head))
    assert "lm_head.weight" not in ckpt.groups.text
    assert "lm_head.weight" in ckpt.groups.ignored


# --- broken checkpoints: each gives a clear error naming the file and tensor ---------------------
def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is not a folder"):
        Checkpoint(tmp_path / "file")


def test_missing_config(tiny_checkpoint: Path, tmp_path: Path) -> None:
    dst = shutil.copytree(tiny_checkpoint, tmp_path / "c")
    (dst / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config\.json; found: .*model\.safetensors"):
        Checkpoint(dst)


def test_missing_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    dst = tmp_path / "w"
    dst.mkdir()
    shutil.copy(tiny_checkpoint / "config.json", dst)
    with pytest.raises(
        CheckpointError, match=r"no model\.safetensors and no model\.safetensors\.index\.json"
    ):
        Checkpoint(dst)


def test_index_names_a_missing_shard(tiny_checkpoint: Path, tmp_path: Path) -> None:
    dst = shutil.copytree(tiny_checkpoint, tmp_path / "i")
    (dst / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}})
    )
    with pytest.raises(CheckpointError, match="missing: model-00002-of-00002.safetensors"):
        Checkpoint(dst)


def test_index_names_a_tensor_its_shard_lacks(tiny_checkpoint: Path, tmp_path: Path) -> None:
    dst = shutil.copytree(tiny_checkpoint, tmp_path / "i")
    (dst / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.language_model.nothing": "model.safetensors"}})
    )
    with pytest.raises(
        CheckpointError, match="'model.language_model.nothing' is in model.safetensors"
    ):
        Checkpoint(dst)


def test_missing_tensor(tiny_checkpoint: Path, tmp_path: Path) -> None:
    gone = "model.language_model.layers.2.linear_attn.in_proj_b.weight"
    dst = rewrite(tiny_checkpoint, tmp_path / "m", lambda e: [x for x in e if x[0] != gone])
    with pytest.raises(CheckpointError, match=f"tensor '{gone}' is missing"):
        Checkpoint(dst)


def test_untied_config_without_head(tiny_checkpoint: Path, tmp_path: Path) -> None:
    dst = shutil.copytree(tiny_checkpoint, tmp_path / "u")
    cfg = json.loads((dst / "config.json").read_text())
    cfg["tie_word_embeddings"] = cfg["text_config"]["tie_word_embeddings"] = False
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match="'lm_head.weight' is missing .*tie_word_embeddings is false"
    ):
        Checkpoint(dst)


def test_shape_disagrees_with_config(tiny_checkpoint: Path, tmp_path: Path) -> None:
    dst = shutil.copytree(tiny_checkpoint, tmp_path / "s")
    cfg = json.loads((dst / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 256
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError,
        match=r"model\.safetensors: tensor 'model\.language_model\.layers\.0\.mlp\.gate_proj"
        r"\.weight' has shape \[192, 64\], but config\.json implies \[256, 64\]",
    ):
        Checkpoint(dst)


def test_more_layers_than_config(tiny_checkpoint: Path, tmp_path: Path) -> None:
    extra = [
        ("model.language_model.layers.4.input_layernorm.weight", "BF16", np.zeros(64, np.uint16))
    ]
    dst = rewrite(tiny_checkpoint, tmp_path / "x", lambda e: e + extra)
    with pytest.raises(
        CheckpointError, match="belongs to layer 4, but config.json has num_hidden_layers = 4"
    ):
        Checkpoint(dst)


@pytest.mark.parametrize("dtype", ["I8", "F8_E4M3"])
def test_unsupported_dtype(tiny_checkpoint: Path, tmp_path: Path, dtype: str) -> None:
    name = "model.language_model.layers.0.mlp.down_proj.weight"

    def to_int8(entries: Entries) -> Entries:
        return [
            (n, dtype, np.zeros(a.shape, np.int8)) if n == name else (n, d, a)
            for n, d, a in entries
        ]

    dst = rewrite(tiny_checkpoint, tmp_path / "d", to_int8)
    with pytest.raises(
        CheckpointError, match=f"'{name}' has dtype {dtype}; supported: F32, F16, BF16"
    ):
        Checkpoint(dst)


def test_other_architecture(tiny_checkpoint: Path, tmp_path: Path) -> None:
    dst = shutil.copytree(tiny_checkpoint, tmp_path / "a")
    (dst / "config.json").write_text(
        json.dumps(
            {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64}
        )
    )
    with pytest.raises(ConfigError, match="this is a 'llama' model .*LlamaForCausalLM"):
        Checkpoint(dst)


def test_invalid_config_json(tiny_checkpoint: Path, tmp_path: Path) -> None:
    dst = shutil.copytree(tiny_checkpoint, tmp_path / "j")
    (dst / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json: invalid JSON"):
        Checkpoint(dst)


@pytest.mark.parametrize("keep", [0, 5, 8, 100, 0.5, 0.999])
def test_truncated_safetensors(tiny_checkpoint: Path, tmp_path: Path, keep: float) -> None:
    dst = shutil.copytree(tiny_checkpoint, tmp_path / "t")
    path = dst / "model.safetensors"
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    path.write_bytes(data[:n])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: .*truncated"):
        Checkpoint(dst)


def test_corrupt_header(tiny_checkpoint: Path, tmp_path: Path) -> None:
    dst = shutil.copytree(tiny_checkpoint, tmp_path / "h")
    path = dst / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:12] = b"\xff\xfe\x00{"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="invalid safetensors header"):
        Checkpoint(dst)


def test_bad_offsets(tiny_checkpoint: Path, tmp_path: Path) -> None:
    dst = shutil.copytree(tiny_checkpoint, tmp_path / "o")
    path = dst / "model.safetensors"
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    name = "model.language_model.norm.weight"
    header[name]["data_offsets"][1] += 2  # byte count no longer matches dtype x shape
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (n - len(blob)) if len(blob) <= n else b""
    assert len(blob) == n
    path.write_bytes(data[:8] + blob + data[8 + n :])
    with pytest.raises(
        CheckpointError, match=f"tensor '{name}': BF16 \\[64\\] needs 128 bytes, header gives 130"
    ):
        Checkpoint(dst)
