"""Gated DeltaNet kernels on every table: the causal conv1d (+ its state) and the delta rule.

The delta rule is compared with the numpy recurrence of `qwen_edge.backends.reference` (the
ground truth) over hundreds of steps with strong and weak decay; fp32 reordering keeps outputs
within 1e-5 relative to their scale.
"""

from __future__ import annotations

import numpy as np
import pytest

from qwen_edge.backends.native import core
from qwen_edge.backends.reference import _delta_rule_recurrent

_core = core()


@pytest.mark.parametrize(
    ("t", "c", "kw"), [(1, 5, 4), (2, 33, 4), (3, 16, 4), (7, 48, 4), (70, 24, 2), (5, 9, 1)]
)
def test_conv1d_silu(isa: str, t: int, c: int, kw: int) -> None:
    rng = np.random.default_rng(t * 100 + c)
    w = rng.standard_normal((kw, c)).astype(np.float32)
    state = rng.standard_normal((kw - 1, c)).astype(np.float32)
    x = rng.standard_normal((t, c)).astype(np.float32)
    y, s = _core.conv1d_silu(w, state, x, isa=isa)
    window = np.concatenate([state, x]).astype(np.float64)
    pre = sum(window[j : j + t] * w[j] for j in range(kw))
    want = pre / (1 + np.exp(-pre))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(s, window[t:].astype(np.float32))
    # split into steps: same outputs and state
    s2, ys = state, []
    for i in range(t):
        yi, s2 = _core.conv1d_silu(w, s2, x[i : i + 1], isa=isa)
        ys.append(yi)
    np.testing.assert_allclose(np.concatenate(ys), y, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(s2, s)


@pytest.mark.parametrize(
    ("t", "dk", "dv"),
    [(1, 4, 4), (3, 16, 8), (300, 32, 16), (40, 128, 128), (9, 13, 7), (6, 128, 96), (4, 160, 80)],
)
def test_delta_rule(isa: str, t: int, dk: int, dv: int) -> None:
    rng = np.random.default_rng(t + dk * 1000 + dv)
    k = rng.standard_normal((t, dk)).astype(np.float32)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    q = (rng.standard_normal((t, dk)) / np.sqrt(dk)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True) * np.sqrt(dk)
    v = rng.standard_normal((t, dv)).astype(np.float32)
    g = -rng.uniform(0, 3, t).astype(np.float32) * rng.choice([0.001, 1, 10], t).astype(np.float32)
    beta = rng.uniform(0, 1, t).astype(np.float32)
    s0 = rng.standard_normal((dk, dv)).astype(np.float32)
    decay = np.exp(g).astype(np.float32)
    o, s = _core.delta_rule(s0, q, k, v, decay, beta, isa=isa)
    want_o, want_s = _delta_rule_recurrent(
        q[:, None], k[:, None], v[:, None], g[:, None], beta[:, None], s0[None]
    )
    np.testing.assert_allclose(o, want_o[:, 0], rtol=1e-4, atol=2e-5 * np.abs(want_o).max())
    np.testing.assert_allclose(s, want_s[0], rtol=1e-4, atol=2e-5 * np.abs(want_s).max())
    if isa != "ref":
        ro, _ = _core.delta_rule(s0, q, k, v, decay, beta, isa="ref")
        np.testing.assert_allclose(o, ro, rtol=1e-5, atol=1e-5 * np.abs(ro).max())
