"""Random-weight Qwen3.5 checkpoints, written with numpy alone (no torch needed).

Used by `qwen-edge demo` on machines without a downloaded checkpoint, by tests, and by
`tools/make_checkpoint.py`, which loads the same weights into transformers and saves them with
`save_pretrained`. Weights are a pure function of (config, seed, tensor name), so any one tensor
can be regenerated alone, and their scales keep activations and logits in a realistic range
(not the near-uniform logits of a 0.02-std init), which makes numerical comparisons meaningful.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..formats.config import ModelConfig
from ..formats.safetensors import DTYPE_SIZES, float32_to_bf16, write_safetensors

STORAGE_DTYPES = {"bf16": "BF16", "f16": "F16", "f32": "F32"}
# docs/model.md §3.1: the hub stores these two kinds in float32 whatever the checkpoint dtype.
FP32_TENSOR_SUFFIXES = ("linear_attn.A_log", "linear_attn.norm.weight")


def random_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A float32 tensor for `name`, reproducible from (name, shape, seed) alone."""
    return _random_rows(np.random.default_rng([seed, zlib.crc32(name.encode())]), name, shape)


def random_tensor_chunks(
    name: str, shape: tuple[int, ...], seed: int, chunk_rows: int = 4096
) -> Iterator[np.ndarray]:
    """`random_tensor(name, shape, seed)` in chunks of rows, equal to it value for value (the
    generator draws the same stream in pieces), so a 9B embedding never sits in memory whole."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if len(shape) < 2:
        yield _random_rows(rng, name, shape)
        return
    for r0 in range(0, shape[0], chunk_rows):
        yield _random_rows(rng, name, (min(chunk_rows, shape[0] - r0), *shape[1:]))


# Tiled weights: each large matrix draws this many values exactly, then builds its rows from them.
TILED_POOL_VALUES = 1 << 22


def tiled_tensor_chunks(
    name: str, shape: tuple[int, ...], seed: int, dtype: str, chunk_rows: int = 4096
) -> Iterator[np.ndarray]:
    """A cheap stand-in for `random_tensor`, stored as `dtype` ("bf16", "f16", "f32"), in chunks
    of rows, for checkpoints too big to draw value by value on a busy machine (a
    9B-shaped one is ~9e9 draws): a matrix of more than `TILED_POOL_VALUES` values draws a pool
    of that many with `random_tensor`'s distribution for its name and row length, and each row is
    a pool row picked at random with a random sign, so its scales and statistics match and the
    writing costs a copy per value. Smaller tensors (norms, gates, A_log) are exact. For speed and
    memory measurements; not `random_tensor`'s values."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), 1])
    if len(shape) < 2 or int(np.prod(shape)) <= TILED_POOL_VALUES:
        for part in random_tensor_chunks(name, shape, seed, chunk_rows):
            yield _storage(name, part, dtype)[1]
        return
    row = int(np.prod(shape[1:]))
    pool_rows = max(2, TILED_POOL_VALUES // row)
    pool = _storage(name, _random_rows(rng, name, (pool_rows, *shape[1:])), dtype)[1]
    flipped = _storage(name, -_random_rows_from(pool, name, dtype), dtype)[1]
    both = np.concatenate([pool, flipped])
    for r0 in range(0, shape[0], chunk_rows):
        n = min(chunk_rows, shape[0] - r0)
        yield both[rng.integers(0, 2 * pool_rows, n)]


def _random_rows_from(stored: np.ndarray, name: str, dtype: str) -> np.ndarray:
    """Stored values back to float32 (to negate them exactly)."""
    kind = _storage(name, np.zeros(1, np.float32), dtype)[0]
    if kind == "BF16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return stored.astype(np.float32)


def _random_rows(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The next `shape` values of tensor `name` from rng (whole tensors or row chunks: every
    scale depends on the name and the row length only)."""
    module = name.rsplit(".", 2)[-2]  # e.g. "input_layernorm", "q_proj", "conv1d"
    if name.endswith("A_log"):
        # Decay rates from fast to slow forgetting: A in [0.05, 4].
        return np.log(rng.uniform(0.05, 4.0, shape)).astype(np.float32)
    if name.endswith("dt_bias"):
        return rng.normal(-2.0, 1.0, shape).astype(np.float32)
    if name.endswith("linear_attn.norm.weight"):  # plain-weight gated norm, used as-is
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if "norm" in module:  # zero-centred (1 + w) norms
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    if name.endswith("conv1d.weight"):
        return (0.5 * rng.standard_normal(shape)).astype(np.float32)
    if name.endswith(("embed_tokens.weight", "lm_head.weight")):
        # Logit spread of a few units for a unit-RMS final hidden state.
        return (3.0 / np.sqrt(shape[-1]) * rng.standard_normal(shape)).astype(np.float32)
    fan_in = shape[-1] if len(shape) > 1 else 1
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def mtp_tensor_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The MTP head the hub checkpoints carry (docs/model.md §5): fc, three norms, one attention
    layer."""
    H = config.hidden_size
    layer = config.text_tensor_shapes()
    full = config.full_layers[0]
    shapes: dict[str, tuple[int, ...]] = {
        "mtp.fc.weight": (H, 2 * H),
        "mtp.pre_fc_norm_embedding.weight": (H,),
        "mtp.pre_fc_norm_hidden.weight": (H,),
        "mtp.norm.weight": (H,),
    }
    prefix = f"layers.{full}."
    for name, shape in layer.items():
        if name.startswith(prefix):
            shapes["mtp.layers.0." + name[len(prefix) :]] = shape
    return shapes


def _storage(name: str, values: np.ndarray, dtype: str) -> tuple[str, np.ndarray]:
    if name.endswith(FP32_TENSOR_SUFFIXES) or dtype == "f32":
        return "F32", values.astype(np.float32)
    if dtype == "f16":
        return "F16", values.astype(np.float16)
    return "BF16", float32_to_bf16(values)


def write_random_checkpoint(
    out_dir: str | Path,
    hf_config: dict[str, Any],
    *,
    seed: int = 0,
    layout: str = "wrapper",
    dtype: str = "bf16",
    with_mtp: bool = True,
    extra_files: dict[str, Any] | None = None,
    shard_bytes: int | None = None,
    tiled: bool = False,
) -> Path:
    """Writes `config.json` and `model.safetensors` of a random-weight checkpoint.

    Tensors are made and written in chunks of rows, so memory stays at a few tens of MB
    whatever the model's size (a 9B-shaped checkpoint included).

    Args:
        out_dir: folder to create (may exist).
        hf_config: a wrapper `config.json` dict (see `qwen_edge.presets.hf_config`).
        seed: weight seed.
        layout: "wrapper" (hub layout: `model.language_model.*`, MTP tensors) or "text"
            (`model.*`, as `Qwen3_5ForCausalLM.save_pretrained` writes).
        dtype: storage type of the matrices: "bf16" (as released), "f16" or "f32".
        with_mtp: add the MTP head's tensors (wrapper layout only, as on the hub).
        extra_files: more files to write into the folder, name -> JSON object or text.
        shard_bytes: split the weights into shards of at most this many bytes (a tensor larger
            than that gets a shard of its own), named and indexed as the hub does
            (`model-00001-of-00004.safetensors` + `model.safetensors.index.json`).
        tiled: large matrices from `tiled_tensor_chunks` (fast, same scales, not the same
            values) instead of `random_tensor`.

    Returns:
        The checkpoint folder.
    """
    from .presets import text_only_config

    if layout not in ("wrapper", "text"):
        raise ValueError(f"layout must be 'wrapper' or 'text', not {layout!r}")
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(STORAGE_DTYPES)}, not {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = ModelConfig.from_hf(hf_config)
    file_config = hf_config if layout == "wrapper" else text_only_config(hf_config)

    prefix = "model.language_model." if layout == "wrapper" else "model."
    names: list[tuple[str, str, tuple[int, ...]]] = []  # (canonical, stored, shape)
    for name, shape in config.text_tensor_shapes().items():
        stored = name if name == "lm_head.weight" else prefix + name
        names.append((name, stored, shape))
    if with_mtp and layout == "wrapper":
        names += [(n, n, s) for n, s in mtp_tensor_shapes(config).items()]

    def chunks(canonical: str, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
        if tiled:
            yield from tiled_tensor_chunks(canonical, shape, seed, dtype)
            return
        for part in random_tensor_chunks(canonical, shape, seed):
            yield _storage(canonical, part, dtype)[1]

    entries = [
        (stored, _storage(canonical, np.zeros(1, np.float32), dtype)[0], shape)
        for canonical, stored, shape in names
    ]
    shards: list[list[int]] = [[]]  # entry indices per shard
    size = 0
    for i, (_, st_dtype, shape) in enumerate(entries):
        nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZES[st_dtype]
        if shard_bytes and shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nbytes
    files = (
        ["model.safetensors"]
        if len(shards) == 1 and not shard_bytes
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map: dict[str, str] = {}
    total = 0
    for fname, idx in zip(files, shards, strict=True):
        write_safetensors(
            out / fname,
            [entries[i] for i in idx],
            (chunks(names[i][0], names[i][2]) for i in idx),
            {"format": "pt"},
        )
        for i in idx:
            weight_map[entries[i][0]] = fname
            total += int(np.prod(entries[i][2], dtype=np.int64)) * DTYPE_SIZES[entries[i][1]]
    if files != ["model.safetensors"]:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(file_config, indent=2) + "\n")
    for fname, content in (extra_files or {}).items():
        text = content if isinstance(content, str) else json.dumps(content, indent=2) + "\n"
        (out / fname).write_text(text, encoding="utf-8")
    return out
