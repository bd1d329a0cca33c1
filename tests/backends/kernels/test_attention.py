"""Attention over one KV head on every table, f16 and f32 caches, against float64 numpy."""

from __future__ import annotations

import numpy as np
import pytest

from qwen_edge.backends.native import core
from qwen_edge.formats.quant import quantize_q8a

_core = core()


@pytest.mark.parametrize("kv", ["f16", "f32"])
@pytest.mark.parametrize(
    ("n_q", "n", "d"), [(1, 1, 16), (4, 7, 32), (4, 130, 256), (3, 17, 24), (1, 513, 64), (2, 9, 5)]
)
def test_attention(isa: str, kv: str, n_q: int, n: int, d: int) -> None:
    rng = np.random.default_rng(n_q * 1000 + n + d)
    q = rng.standard_normal((n_q, d)).astype(np.float32)
    k = rng.standard_normal((n, d)).astype(np.float32)
    v = rng.standard_normal((n, d)).astype(np.float32)
    if kv == "f16":
        k16, v16 = k.astype(np.float16), v.astype(np.float16)
        k, v = k16.astype(np.float32), v16.astype(np.float32)
        got = _core.attention(q, k16.view(np.uint16), v16.view(np.uint16), 0.25, isa=isa)
    else:
        got = _core.attention(q, k, v, 0.25, isa=isa)
    s = 0.25 * q.astype(np.float64) @ k.T.astype(np.float64)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    want = p @ v.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * np.abs(v).max())


@pytest.mark.parametrize(("n_q", "n", "d"), [(1, 1, 32), (4, 7, 32), (4, 130, 256), (3, 17, 64)])
def test_attention_q8(isa: str, n_q: int, n: int, d: int) -> None:
    """The int8 cache: rows through q8a (as the model stores them), then float64 attention on
    the dequantized rows; the kernel's only differences are summation orders."""
    rng = np.random.default_rng(n_q * 1000 + n + d)
    q = rng.standard_normal((n_q, d)).astype(np.float32)
    k = rng.standard_normal((n, d)).astype(np.float32)
    v = 3 * rng.standard_normal((n, d)).astype(np.float32)
    if n > 1:
        k[0, :32] = 0.0  # an all-zero block has scale 0
    got = _core.attention_q8(q, k, v, 0.25, isa=isa)

    def dequantized(x: np.ndarray) -> np.ndarray:
        scale, _, codes = quantize_q8a(x.reshape(-1))
        return (scale[:, None].astype(np.float64) * codes).reshape(x.shape)

    kd, vd = dequantized(k), dequantized(v)
    assert np.abs(kd - k).max() > 1e-3  # the test would notice a kernel reading floats
    s = 0.25 * q.astype(np.float64) @ kd.T
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, p @ vd, rtol=1e-4, atol=2e-5 * np.abs(vd).max())


def test_attention_q8_needs_whole_blocks() -> None:
    x = np.zeros((2, 48), np.float32)
    with pytest.raises(RuntimeError, match="d % 32"):
        _core.attention_q8(x, x, x, 1.0)
