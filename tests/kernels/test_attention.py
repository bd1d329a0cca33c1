"""Attention over one KV head on every table, f16 and f32 caches, against float64 numpy."""

from __future__ import annotations

import numpy as np
import pytest

from qwen_edge.runtime import core

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
