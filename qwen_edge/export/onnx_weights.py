"""Stored `.qe` tensors -> the form onnxruntime's `MatMulNBits` takes (docs/onnx.md).

* `q4g32` as is: bits 4, blocks of 32, MatMulNBits' default zero point 8, scales widened from
  f16 to f32 exactly;
* `q4ag32` and `q4k`, whose blocks have a minimum, carry it as a float zero point `-m / d`
  (one float rounding of the minimum: the only weights that are not bit-identical);
* `q8g32`: bits 8 (zero point 128, its offset-binary code);
* `q6k`: bits 8 too (codes `u - 32 + 128`, scale `D * sc` in f32: exact);
* plain matrices (f32, f16, bf16): an f32 matrix for `MatMul`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..formats import quant

F32 = np.float32


@dataclass
class OnnxMatrix:
    """A matrix as MatMulNBits takes it: packed codes [N, nb, 32 * bits / 8] uint8, f32 scales
    [N, nb], optional f32 zero points [N, nb] (4-bit only); or a plain f32 weight [N, K]."""

    shape: tuple[int, int]
    bits: int = 0  # 0: plain
    packed: np.ndarray | None = None
    scales: np.ndarray | None = None
    zero_points: np.ndarray | None = None
    plain: np.ndarray | None = None


def onnx_matrix(fmt: str, data: Any, shape: tuple[int, int]) -> OnnxMatrix:
    """The MatMulNBits form of one stored tensor (bytes of `fmt`, docs/weight-formats.md)."""
    rows, k = int(shape[0]), int(shape[1])
    if fmt in quant.PLAIN_FORMATS:
        return OnnxMatrix((rows, k), plain=quant.decode_plain(fmt, data, (rows, k)).astype(F32))
    q = quant.unpack(fmt, data, rows, k)
    nb = k // quant.BLOCK_K
    codes = q.codes.astype(np.uint8)
    zp = None
    if fmt in ("q8g32", "q6k"):
        bits = 8
        if fmt == "q6k":  # u - 32 + 128: the signed 6-bit code in 8-bit offset binary
            assert q.row_d is not None
            codes = codes + np.uint8(96)
            scales = q.row_d.astype(F32)[:, None] * q.d.astype(F32)
        else:
            scales = q.d.astype(F32)
    else:
        bits = 4
        if fmt == "q4g32":
            scales = q.d.astype(F32)
        elif fmt == "q4ag32":  # d q + m = (q - (-m / d)) d
            assert q.m is not None
            scales = q.d.astype(F32)
            zp = _zero_point(scales, -q.m.astype(F32))
        else:  # q4k: D sc q - M mn = (q - M mn / (D sc)) D sc
            assert q.m is not None and q.row_d is not None and q.row_m is not None
            scales = q.row_d.astype(F32)[:, None] * q.d.astype(F32)
            offset = q.row_m.astype(F32)[:, None] * q.m.astype(F32)
            zp = _zero_point(scales, offset)
    # 4-bit: element 2j in the low nibble of byte j, 2j+1 in the high one
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4) if bits == 4 else codes
    packed = np.ascontiguousarray(packed.reshape(rows, nb, quant.BLOCK_K * bits // 8))
    return OnnxMatrix((rows, k), bits, packed, np.ascontiguousarray(scales, F32), zp)


def _zero_point(scales: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """offset / scale (0 where the scale is 0: the block is all zero codes' value then)."""
    safe = np.where(scales == 0, F32(1), scales)
    return np.where(scales == 0, F32(0), offset / safe).astype(F32)


def dequantize_onnx(m: OnnxMatrix) -> np.ndarray:
    """The float32 matrix the ONNX graph multiplies by: (code - zero point) * scale."""
    if m.plain is not None:
        return m.plain
    assert m.packed is not None and m.scales is not None
    rows, k = m.shape
    if m.bits == 4:
        lo, hi = m.packed & 15, m.packed >> 4
        codes = np.stack([lo, hi], axis=-1).reshape(rows, k)
    else:
        codes = m.packed.reshape(rows, k)
    zp = m.zero_points if m.zero_points is not None else np.full_like(m.scales, 2 ** (m.bits - 1))
    blocks = codes.reshape(rows, -1, quant.BLOCK_K).astype(F32)
    return ((blocks - zp[..., None]) * m.scales[..., None]).reshape(rows, k).astype(F32)
