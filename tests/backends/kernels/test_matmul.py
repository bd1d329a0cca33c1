"""Matrix products on every kernel table: float weights, q8a activations, packed W4A8/W8A8.

Integer paths are exact: every table returns the bits of `ref` (the float combination per block
is specified op by op). Against float64 numpy, the quantized product of the dequantized operands
is within K * eps * sum|w x| (float32 accumulation over blocks).
"""

from __future__ import annotations

import numpy as np
import packing
import pytest

from qwen_edge.backends.native import core
from qwen_edge.formats import quant

_core = core()
EPS = float(np.finfo(np.float32).eps)
SHAPES = [(1, 32), (7, 32), (8, 64), (9, 96), (13, 160), (24, 1024), (5, 2080)]


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


# --- float weights ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
@pytest.mark.parametrize(("rows", "k"), [(1, 1), (3, 7), (8, 16), (9, 17), (5, 33), (17, 257)])
@pytest.mark.parametrize("m", [1, 2, 5])
def test_gemm_float(isa: str, kind: str, rows: int, k: int, m: int) -> None:
    rng = np.random.default_rng(rows * 7919 + k * 31 + m)
    w = rng.standard_normal((rows, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    if kind == "f16":
        w16 = w.astype(np.float16)
        w, got = w16.astype(np.float32), _core.gemm_f16(w16.view(np.uint16), x, isa=isa)
    elif kind == "bf16":
        w16 = (w.view(np.uint32) >> 16).astype(np.uint16)
        w = (w16.astype(np.uint32) << 16).view(np.float32)
        got = _core.gemm_bf16(w16, x, isa=isa)
    else:
        got = _core.gemm_f32(w, x, isa=isa)
    want = x.astype(np.float64) @ w.astype(np.float64).T
    bound = 2 * k * EPS * (np.abs(x) @ np.abs(w).T) + 1e-30
    assert np.all(np.abs(got - want) <= bound), f"seed {rows * 7919 + k * 31 + m}"
    if m == 1:  # the decode entry point agrees with the batched one
        np.testing.assert_allclose(
            _core.gemv_f32(w, x[0], isa=isa), want[0], rtol=0, atol=bound.max()
        )


# --- activation quantization --------------------------------------------------------------------
def _activation_cases(rng: np.random.Generator) -> list[np.ndarray]:
    d = np.float32(0.25)
    ties = (np.arange(-64, 64, dtype=np.float32) + np.float32(0.5)) * d  # exact .5 multiples
    ties[0] = -127 * d  # pins max|x| so d stays 0.25
    just_below = np.nextafter(np.float32(2.5), np.float32(0)) * np.ones(32, np.float32)
    just_below[0] = 127 * 0.01
    return [
        rng.standard_normal(32 * 37).astype(np.float32),
        np.zeros(64, np.float32),  # d = 0 blocks
        np.concatenate([np.full(32, 3e38, np.float32), np.full(32, -1e-38, np.float32)]),
        ties,
        just_below,
        (rng.standard_normal(1024) * 1e-30).astype(np.float32),  # tiny values, subnormal-ish d
        np.tile(np.float32([127, -127, 63.5, -63.5]), 8),
    ]


def test_quantize_q8a_exact(isa: str) -> None:
    rng = np.random.default_rng(5)
    for x in _activation_cases(rng):
        d, s, q = _core.quantize_q8a(x, isa=isa)
        rd, rs, rq = _core.quantize_q8a(x, isa="ref")
        np.testing.assert_array_equal(bits(d), bits(rd))
        np.testing.assert_array_equal(q, rq)
        np.testing.assert_array_equal(s, rs)
        with np.errstate(over="ignore", invalid="ignore"):  # a subnormal d overflows 1/d
            nd, ns, nq = quant.quantize_q8a(x)
        np.testing.assert_array_equal(bits(d), bits(nd))
        np.testing.assert_array_equal(q, nq)
        np.testing.assert_array_equal(s, ns)


# --- packed products ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", packing.FORMATS)
@pytest.mark.parametrize(("rows", "k"), SHAPES)
@pytest.mark.parametrize("m", [1, 3, 4, 5, 17, 33])
def test_matmul_q8a_exact(isa: str, fmt: str, rows: int, k: int, m: int) -> None:
    seed = hash((fmt, rows, k, m)) % 2**32
    rng = np.random.default_rng(seed)
    data, w = packing.random_packed(fmt, rows, k, rng)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block (d = 0)
    got = _core.matmul_q8a(fmt, data, rows, k, x, isa=isa)
    want = _core.matmul_q8a(fmt, data, rows, k, x, isa="ref")
    np.testing.assert_array_equal(bits(got), bits(want), err_msg=f"seed {seed}")
    # ref against float64 numpy on the dequantized operands
    w = w.astype(np.float64)
    xd = quant.fake_quantize_q8a(x).astype(np.float64)
    exact = xd @ w.T
    bound = 4 * (k / 32 + 8) * EPS * (np.abs(xd) @ np.abs(w).T) + 1e-30
    assert np.all(np.abs(want - exact) <= bound), f"seed {seed}"


@pytest.mark.parametrize("fmt", packing.FORMATS)
def test_matmul_q8a_extremes(isa: str, fmt: str) -> None:
    """All-max codes and activations: the integer sums at their limits, still exact."""
    rows, k = 16, 256
    top = {"q8g32": 255, "q6k": 63}.get(fmt, 15)  # the largest code
    rng = np.random.default_rng(11)
    for code in (0, top):
        q = packing.random_quantized(fmt, rows, k, rng)
        q.codes[:] = code
        data = quant.pack(q)
        for value in (127.0, -127.0):
            x = np.full((3, k), value, np.float32)
            got = _core.matmul_q8a(fmt, data, rows, k, x, isa=isa)
            want = _core.matmul_q8a(fmt, data, rows, k, x, isa="ref")
            np.testing.assert_array_equal(bits(got), bits(want))


@pytest.mark.parametrize("fmt", packing.FORMATS)
def test_dequantize_exact(isa: str, fmt: str) -> None:
    rng = np.random.default_rng(3)
    for rows, k in [(1, 32), (13, 96), (24, 1024)]:
        data, want = packing.random_packed(fmt, rows, k, rng)
        got = _core.dequantize(fmt, data, rows, k, isa=isa)
        np.testing.assert_array_equal(bits(got), bits(want))
