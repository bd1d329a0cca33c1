"""Test-only packing of matrices into the model file's packed formats (docs/weight-formats.md),
and a minimal model-file writer.

A minimal round-to-nearest packer so kernel and model tests can make packed weights without the
exporter. It is NOT the project's quantizer (that is `qwen_edge/quant.py`, issue 3, with scale
searches); it only has to produce valid bytes whose values the C++ `ref` dequantizer defines.
`codes_and_factors` are also built from random bytes to hit every bit pattern.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("q8g32", "q4g32", "q4ag32", "q4k")
QUANT_BYTES = {"q8g32": 256, "q4g32": 128, "q4ag32": 128, "q4k": 128}
SCALE_BYTES = {"q8g32": 16, "q4g32": 16, "q4ag32": 32, "q4k": 16}


def _align(n: int) -> int:
    return (n + 63) // 64 * 64


def packed_size(fmt: str, rows: int, k: int) -> int:
    groups, blocks = (rows + 7) // 8, k // 32
    size = _align(groups * blocks * QUANT_BYTES[fmt]) + _align(groups * blocks * SCALE_BYTES[fmt])
    return size + (_align(groups * 64) if fmt == "q4k" else 0)


def pack_codes(fmt: str, codes: np.ndarray, scales: np.ndarray, row_params: np.ndarray | None):
    """Bytes of a packed tensor from its parts.

    codes: [Rp, K] integer codes (q8g32: u8 0..255; 4-bit: 0..15), Rp a multiple of 8.
    scales: [G, nb, n] uint8 view of the scale records (n = SCALE_BYTES[fmt]).
    row_params: q4k [G, 16] float32 (d[8] then m[8]).
    """
    Rp, K = codes.shape
    G, nb = Rp // 8, K // 32
    c = codes.reshape(G, 8, nb, 32).transpose(0, 2, 1, 3)  # [G, nb, row, col]
    if fmt == "q8g32":
        # step s (8 of them), byte i = row i // 4, column 4 s + i % 4
        rec = c.reshape(G, nb, 8, 8, 4).transpose(0, 1, 3, 2, 4).reshape(G, nb, 256)
    else:
        # chunk ch, byte i = row i // 4: low nibble column 8 ch + i % 4, high 8 ch + 4 + i % 4
        steps = c.reshape(G, nb, 8, 4, 2, 4)  # row, chunk, half, j
        lo = steps[:, :, :, :, 0, :].transpose(0, 1, 3, 2, 4)  # [G, nb, chunk, row, j]
        hi = steps[:, :, :, :, 1, :].transpose(0, 1, 3, 2, 4)
        rec = (lo | (hi << 4)).reshape(G, nb, 128)
    out = np.zeros(packed_size(fmt, Rp, K), np.uint8)
    q = rec.astype(np.uint8).reshape(-1)
    out[: q.size] = q
    off = _align(q.size)
    s = np.ascontiguousarray(scales, np.uint8).reshape(-1)
    out[off : off + s.size] = s
    if fmt == "q4k":
        off += _align(s.size)
        rp = np.ascontiguousarray(row_params, np.float32).view(np.uint8).reshape(-1)
        out[off : off + rp.size] = rp
    return out


def dequantize(fmt: str, codes, scales, row_params, rows: int) -> np.ndarray:
    """The documented dequantization in float32, products left to right (numpy side)."""
    Rp, K = codes.shape
    G, nb = Rp // 8, K // 32
    q = codes.reshape(G, 8, nb, 32).astype(np.float32)
    if fmt in ("q8g32", "q4g32", "q4ag32"):
        d = scales[:, :, :16].copy().view(np.float16).astype(np.float32)  # [G, nb, 8]
        d = d.transpose(0, 2, 1)[..., None]  # [G, 8, nb, 1]
        if fmt == "q8g32":
            w = d * (q - 128)
        elif fmt == "q4g32":
            w = d * (q - 8)
        else:
            m = scales[:, :, 16:].copy().view(np.float16).astype(np.float32)
            w = d * q + m.transpose(0, 2, 1)[..., None]
    else:
        sc = scales[:, :, :8].astype(np.float32).transpose(0, 2, 1)[..., None]
        mn = scales[:, :, 8:].astype(np.float32).transpose(0, 2, 1)[..., None]
        D = row_params[:, :8][:, :, None, None]
        M = row_params[:, 8:][:, :, None, None]
        w = D * sc * q - M * mn
    return w.astype(np.float32).reshape(Rp, K)[:rows]


def random_parts(fmt: str, rows: int, k: int, rng: np.random.Generator, scale: float = 0.05):
    """Random codes (every bit pattern) and plausible factors: (codes, scales, row_params)."""
    Rp, G, nb = (rows + 7) // 8 * 8, (rows + 7) // 8, k // 32
    hi = 256 if fmt == "q8g32" else 16
    codes = rng.integers(0, hi, (Rp, k))
    codes[rows:] = 128 if fmt == "q8g32" else (8 if fmt == "q4g32" else 0)
    row_params = None
    if fmt == "q4k":
        scales = rng.integers(0, 256, (G, nb, 16)).astype(np.uint8)
        row_params = np.abs(rng.normal(0, scale / 64, (G, 16))).astype(np.float32)
        row_params[rows // 8 + (rows % 8 > 0) :] = 0
    else:
        d = (rng.normal(0, scale, (G, nb, 8))).astype(np.float16)
        parts = [d.view(np.uint8).reshape(G, nb, 16)]
        if fmt == "q4ag32":
            m = (rng.normal(0, scale * 4, (G, nb, 8))).astype(np.float16)
            parts.append(m.view(np.uint8).reshape(G, nb, 16))
        scales = np.concatenate(parts, axis=2)
    _zero_padding_rows(fmt, scales, row_params, rows)
    return codes, scales, row_params


def _zero_padding_rows(fmt, scales, row_params, rows):
    """Padding rows dequantize to 0, as the format requires."""
    G = scales.shape[0]
    for r in range(rows, G * 8):
        g, rr = divmod(r, 8)
        if fmt == "q4k":
            scales[g, :, rr] = 0
            scales[g, :, 8 + rr] = 0
            row_params[g, rr] = 0
            row_params[g, 8 + rr] = 0
        else:
            scales[g, :, 2 * rr : 2 * rr + 2] = 0
            if fmt == "q4ag32":
                scales[g, :, 16 + 2 * rr : 18 + 2 * rr] = 0


def quantize(fmt: str, w: np.ndarray):
    """Round-to-nearest packing of a float matrix [R, K] (K a multiple of 32).

    Returns (packed bytes, dequantized float32 [R, K]).
    """
    R, K = w.shape
    Rp, G, nb = (R + 7) // 8 * 8, (R + 7) // 8, K // 32
    wp = np.zeros((Rp, K), np.float32)
    wp[:R] = w
    blk = wp.reshape(Rp, nb, 32)
    row_params = None
    if fmt in ("q8g32", "q4g32"):
        amax = np.abs(blk).max(axis=2)
        d = (amax / (127.0 if fmt == "q8g32" else 7.0)).astype(np.float16)
        df = d.astype(np.float32)
        inv = np.divide(1.0, df, out=np.zeros_like(df), where=df != 0)
        q = np.rint(blk * inv[..., None])
        codes = np.clip(q, -127, 127) + 128 if fmt == "q8g32" else np.clip(q, -8, 7) + 8
        scales = d.reshape(G, 8, nb).transpose(0, 2, 1).copy().view(np.uint8)
    elif fmt == "q4ag32":
        lo, hi = blk.min(axis=2), blk.max(axis=2)
        d = ((hi - lo) / 15.0).astype(np.float16)
        m = lo.astype(np.float16)
        df, mf = d.astype(np.float32), m.astype(np.float32)
        inv = np.divide(1.0, df, out=np.zeros_like(df), where=df != 0)
        codes = np.clip(np.rint((blk - mf[..., None]) * inv[..., None]), 0, 15)
        d8 = d.reshape(G, 8, nb).transpose(0, 2, 1).copy().view(np.uint8)
        m8 = m.reshape(G, 8, nb).transpose(0, 2, 1).copy().view(np.uint8)
        scales = np.concatenate([d8, m8], axis=2)
    else:  # q4k: block scale and min as u8 multiples of per-row D and M
        lo = np.minimum(blk.min(axis=2), 0.0)
        hi = blk.max(axis=2)
        s = (hi - lo) / 15.0
        mins = -lo
        D = (s.max(axis=1) / 255.0).astype(np.float32)
        M = (mins.max(axis=1) / 255.0).astype(np.float32)
        sc = np.clip(
            np.rint(np.divide(s, D[:, None], out=np.zeros_like(s), where=D[:, None] > 0)), 0, 255
        )
        mn = np.clip(
            np.rint(np.divide(mins, M[:, None], out=np.zeros_like(s), where=M[:, None] > 0)), 0, 255
        )
        step = D[:, None] * sc
        inv = np.divide(1.0, step, out=np.zeros_like(step), where=step > 0)
        codes = np.clip(np.rint((blk + (M[:, None] * mn)[..., None]) * inv[..., None]), 0, 15)
        sc8 = sc.astype(np.uint8).reshape(G, 8, nb).transpose(0, 2, 1)
        mn8 = mn.astype(np.uint8).reshape(G, 8, nb).transpose(0, 2, 1)
        scales = np.concatenate([sc8, mn8], axis=2)
        row_params = np.concatenate([D.reshape(G, 8), M.reshape(G, 8)], axis=1)
    codes = codes.astype(np.int64).reshape(Rp, K)
    _zero_padding_rows(fmt, scales, row_params, R)
    return pack_codes(fmt, codes, scales, row_params), dequantize(fmt, codes, scales, row_params, R)


def q8a_numpy(x: np.ndarray):
    """The q8a activation quantizer in numpy (round half away from zero): (d, q, sum)."""
    blk = x.reshape(-1, 32).astype(np.float32)
    d = (np.abs(blk).max(axis=1) / np.float32(127.0)).astype(np.float32)
    with np.errstate(over="ignore"):
        inv = np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d != 0).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        v = (blk * inv[:, None]).astype(np.float32)  # the float32 product, as the kernels
    v64 = np.clip(v.astype(np.float64), -127, 127)  # |v| + 0.5 is exact in float64
    q = (np.sign(v64) * np.floor(np.abs(v64) + 0.5)).astype(np.int8)
    return d, q, q.astype(np.int32).sum(axis=1)


def write_model_file(path: Path, config: Any, tensors: dict) -> Path:
    """A minimal writer of docs/model-file.md for tests, until issue 3's exporter is on main:
    the tensors in the given formats, no blobs, the header CRC sealed."""
    import json
    import zlib

    data = bytearray()
    entries = []
    for name, (fmt, shape, buf) in tensors.items():
        data.extend(bytes(-len(data) % 64))
        raw = np.ascontiguousarray(buf).view(np.uint8).reshape(-1).tobytes()
        entries.append(
            {
                "name": name,
                "format": fmt,
                "shape": list(shape),
                "offset": len(data),
                "size": len(raw),
                "crc32": zlib.crc32(raw),
            }
        )
        data.extend(raw)
    header = json.dumps(
        {
            "arch": "qwen3_5",
            "config": config.to_dict(),
            "quant": {"recipe": "test"},
            "tensors": entries,
            "blobs": [],
        }
    ).encode()
    offset = (64 + len(header) + 63) // 64 * 64
    pre = bytearray(64)
    pre[0:8] = b"QWENEDGE"
    pre[8:12] = (1).to_bytes(4, "little")
    pre[12:16] = len(header).to_bytes(4, "little")
    pre[16:20] = zlib.crc32(header).to_bytes(4, "little")
    pre[24:32] = offset.to_bytes(8, "little")
    pre[32:40] = (offset + len(data)).to_bytes(8, "little")
    path.write_bytes(bytes(pre) + header + bytes(offset - 64 - len(header)) + bytes(data))
    return path
