"""Vector kernels on every table: conversions (exact), norms, RoPE, softmax and gates.

Float tolerances: reordered float32 sums over n terms agree with float64 numpy within a few
n * eps relative; exp-based gates within 1e-6 relative (a few ulps of a vectorized exp).
"""

from __future__ import annotations

import numpy as np
import pytest

from qwen_edge.backends.native import core

_core = core()
SIZES = [1, 7, 8, 9, 16, 31, 33, 128, 257]


def special_floats() -> np.ndarray:
    f = np.float32
    vals = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        65504.0,
        65519.99,
        65520.0,
        -65536.0,
        1e-8,
        6e-8,
        5.96e-8,
        2.98e-8,
        2.99e-8,
        6.1e-5,
        6.09e-5,
        1e30,
        -1e-30,
        np.inf,
        -np.inf,
        np.nan,
    ]
    half_ties = (np.arange(1, 64, dtype=np.float32) * np.float32(2**-11) + 1).astype(f)
    sub_ties = np.arange(1, 64, dtype=np.float32) * np.float32(2**-25)  # half-subnormal ties
    rng = np.random.default_rng(0)
    rand = rng.standard_normal(1000).astype(f) * np.exp2(rng.integers(-30, 20, 1000)).astype(f)
    bits = rng.integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32).view(f)
    return np.concatenate([np.array(vals, f), half_ties, sub_ties, rand, bits])


def test_cvt_f32_f16_exact(isa: str) -> None:
    x = special_floats()
    got = _core.cvt_f32_f16(x, isa=isa)
    ref = _core.cvt_f32_f16(x, isa="ref")
    np.testing.assert_array_equal(got, ref)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)  # numpy rounds to nearest even too
    finite = ~np.isnan(x)
    np.testing.assert_array_equal(got[finite], want[finite])
    assert np.all(np.isnan(got[~finite].view(np.float16)))


def test_cvt_half_to_f32_exact(isa: str) -> None:
    h = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    got = _core.cvt_f16_f32(h, isa=isa)
    want = h.view(np.float16).astype(np.float32)
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all()
    got = _core.cvt_bf16_f32(h, isa=isa)
    np.testing.assert_array_equal(got.view(np.uint32), h.astype(np.uint32) << 16)


@pytest.mark.parametrize("n", SIZES)
def test_rms_norms(isa: str, n: int) -> None:
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((3, n)) * 10).astype(np.float32)
    x[1] = 0.0  # eps keeps it finite
    w = rng.standard_normal(n).astype(np.float32)
    z = (rng.standard_normal((3, n)) * 4).astype(np.float32)
    x64 = x.astype(np.float64)
    inv = 1 / np.sqrt((x64**2).mean(axis=1, keepdims=True) + 1e-6)
    tol = 8 * n * np.finfo(np.float32).eps
    np.testing.assert_allclose(
        _core.rms_norm(x, w, 1e-6, isa=isa), x64 * inv * w, rtol=tol, atol=1e-6
    )
    silu = z / (1 + np.exp(-z.astype(np.float64)))
    np.testing.assert_allclose(
        _core.rms_norm_gated(x, w, z, 1e-6, isa=isa), w * x64 * inv * silu, rtol=tol, atol=1e-6
    )
    inv2 = 1 / np.sqrt((x64**2).sum(axis=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(
        _core.l2_norm(x, 1e-6, 0.125, isa=isa), x64 * inv2 * 0.125, rtol=tol, atol=1e-7
    )


@pytest.mark.parametrize(
    ("heads", "d", "half"), [(1, 2, 1), (3, 16, 4), (2, 64, 32), (5, 256, 32), (2, 40, 19)]
)
def test_rope_exact(isa: str, heads: int, d: int, half: int) -> None:
    rng = np.random.default_rng(d)
    x = rng.standard_normal((heads, d)).astype(np.float32)
    theta = rng.uniform(0, 1000, half).astype(np.float32)
    cos, sin = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    got = _core.rope(x, cos, sin, isa=isa)
    a, b = x[:, :half], x[:, half : 2 * half]
    want = x.copy()
    want[:, :half] = a * cos - b * sin
    want[:, half : 2 * half] = b * cos + a * sin
    np.testing.assert_array_equal(got, want)  # separately rounded products, as ref


@pytest.mark.parametrize("n", SIZES)
def test_softmax(isa: str, n: int) -> None:
    rng = np.random.default_rng(n + 1)
    x = (rng.standard_normal(n) * 20).astype(np.float32)
    x[0] = -1e30  # underflows to 0
    e = np.exp(x.astype(np.float64) - x.max())
    np.testing.assert_allclose(_core.softmax(x, isa=isa), e / e.sum(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n", SIZES)
def test_gates(isa: str, n: int) -> None:
    rng = np.random.default_rng(n + 2)
    a = (rng.standard_normal(n) * 8).astype(np.float32)
    a[: min(n, 4)] = np.float32([-100, 100, -88.5, 0])[: min(n, 4)]
    b = rng.standard_normal(n).astype(np.float32)
    a64 = a.astype(np.float64)
    sig = 1 / (1 + np.exp(-a64))
    np.testing.assert_allclose(_core.silu_mul(a, b, isa=isa), a64 * sig * b, rtol=2e-6, atol=1e-30)
    np.testing.assert_allclose(_core.sigmoid_mul(b, a, isa=isa), b * sig, rtol=2e-6, atol=1e-30)
