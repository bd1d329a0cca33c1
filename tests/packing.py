"""Test helpers on top of `qwen_edge.quant` and `qwen_edge.modelfile`: packed matrices with
random codes (every bit pattern, for the kernels), round-to-nearest packing of float matrices
(for whole-model tests), and small model files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qwen_edge.formats import quant
from qwen_edge.formats.model_file import TensorSpec
from qwen_edge.formats.model_file import write_model_file as _write

FORMATS = quant.PACKED_FORMATS


def random_quantized(
    fmt: str, rows: int, k: int, rng: np.random.Generator, scale: float = 0.05
) -> quant.Quantized:
    """Random codes (all values) and plausible factors of a [rows, k] matrix."""
    nb = k // 32
    hi = {"q8g32": 256, "q6k": 64}.get(fmt, 16)
    codes = rng.integers(0, hi, (rows, k)).astype(np.uint8)
    if fmt == "q6k":
        sc = rng.integers(-128, 128, (rows, nb)).astype(np.int8)
        rd = rng.normal(0, scale / 64 / 32, rows).astype(np.float32)
        return quant.Quantized(fmt, codes, sc, None, rd)
    if fmt == "q4k":
        return quant.Quantized(
            fmt,
            codes,
            rng.integers(0, 256, (rows, nb)).astype(np.uint8),
            rng.integers(0, 256, (rows, nb)).astype(np.uint8),
            np.abs(rng.normal(0, scale / 64, rows)).astype(np.float32),
            np.abs(rng.normal(0, scale / 64, rows)).astype(np.float32),
        )
    d = rng.normal(0, scale, (rows, nb)).astype(np.float16)
    m = rng.normal(0, scale * 4, (rows, nb)).astype(np.float16) if fmt == "q4ag32" else None
    return quant.Quantized(fmt, codes, d, m)


def random_packed(fmt: str, rows: int, k: int, rng: np.random.Generator) -> tuple:
    """(bytes, dequantized float32 [rows, k]) of a random packed matrix."""
    q = random_quantized(fmt, rows, k, rng)
    return quant.pack(q), quant.dequantize_quantized(q)


def quantize(fmt: str, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, dequantized float32) of a float matrix stored in `fmt` by the project quantizer."""
    data = quant.quantize(fmt, w)
    return data, quant.dequantize(fmt, data, w.shape)


def write_model_file(path: Path, config: Any, tensors: dict) -> Path:
    """A model file of `config` with tensors {name: (format, shape, stored bytes)}."""
    header = {"arch": "qwen3_5", "config": config.to_dict(), "quant": {"recipe": "test"}}
    items = [
        (TensorSpec(n, f, tuple(s)), np.ascontiguousarray(d)) for n, (f, s, d) in tensors.items()
    ]
    return _write(path, header, items)
