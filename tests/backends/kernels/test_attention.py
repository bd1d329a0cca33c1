"""Attention over one KV head on every table, f16, f32, int8 and 4-bit caches, against float64
numpy.
The kernels stream the cache in tiles of ATTENTION_TILE positions with an online softmax: shapes
below one tile, across several with a ragged last tile, and scores whose max moves between
tiles; the binding checks the kernel stays within its n_q * min(n, tile) floats of scratch."""

from __future__ import annotations

import numpy as np
import pytest

from qwen_edge.backends.native import core
from qwen_edge.formats.quant import quantize_q8a

_core = core()


@pytest.mark.parametrize("kv", ["f16", "f32"])
@pytest.mark.parametrize(
    ("n_q", "n", "d"),
    [
        (1, 1, 16),
        (4, 7, 32),
        (4, 130, 256),
        (3, 17, 24),
        (1, 513, 64),
        (2, 9, 5),
        (4, 256, 40),  # exactly one tile
        (4, 257, 40),  # one tile and one position
        (3, 1000, 72),
        (2, 2049, 13),
    ],
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


def _cache_blocks(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of 32 of x as an integer cache stores them: (d [nb] f32, codes [nb, 32]). The
    int8 cache's are q8a's; the 4-bit cache's d = amax / 7, codes round(x / d) (half away
    from zero) within +-7 (formats.h)."""
    if bits == 8:
        d, _, codes = quantize_q8a(x.reshape(-1))
        return d, codes
    xb = x.reshape(-1, 32).astype(np.float32)
    d = (np.abs(xb).max(axis=1) / np.float32(7)).astype(np.float32)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    v = np.clip(xb * inv[:, None], -7, 7)
    return d, (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int8)


def _dequantized(x: np.ndarray, bits: int = 8) -> np.ndarray:
    """x through an integer cache's blocks along its last axis, back in float64."""
    scale, codes = _cache_blocks(x, bits)
    return (scale[:, None].astype(np.float64) * codes).reshape(x.shape)


def _query_codes(q: np.ndarray, bits: int = 8) -> np.ndarray:
    """Each query row rounded (half away from zero) as the integer caches' scores take it,
    back in float64: to int16 with one scale per row (amax / 32767) against the int8 cache,
    against the 4-bit cache's keys to q8a's int8 blocks of 32 (kernels.h)."""
    if bits == 4:
        scale, codes = _cache_blocks(q, 8)
        return (scale[:, None].astype(np.float64) * codes).reshape(q.shape)
    q = q.astype(np.float32)
    s = np.abs(q).max(axis=-1, keepdims=True) / np.float32(32767)
    inv = np.where(s != 0, np.float32(1) / np.where(s != 0, s, 1), 0).astype(np.float32)
    v = np.clip(q * inv, -32767, 32767)
    codes = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return s.astype(np.float64) * codes


# The tables whose int8-cache weighted sum is in integers (kernels.h): every SIMD table; the
# portable one's is float.
INTEGER_WEIGHTS = {"avx2", "avx_vnni", "avx512_vnni", "neon", "neon_dotprod", "neon_i8mm"}


def _reference_q8(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, isa: str, bits: int = 8
) -> np.ndarray:
    """Attention over the int8 (bits 8) or 4-bit cache as kernels.h defines it for the table:
    the query in int16 (int8 blocks against 4-bit keys) against the dequantized keys, then float64
    attention on the dequantized values; or, on the INTEGER_WEIGHTS tables, an online softmax
    over tiles and per tile and value block the weights p_j * dv_j rounded to int16 against
    W = max p * max dv, their sum with the codes taken exactly and scaled by W / 32767 (float64
    but for the weights, float32 as there)."""
    qd, kd = _query_codes(q, bits), _dequantized(k, bits)
    if isa not in INTEGER_WEIGHTS:
        return _reference(qd, kd, _dequantized(v, bits), scale)
    one, tile = np.float32(32767), _core.ATTENTION_TILE
    n, d = v.shape
    dv, codes = _cache_blocks(v, bits)
    dv, codes = dv.reshape(n, d // 32), codes.reshape(n, d // 32, 32).astype(np.int64)
    out = np.zeros((q.shape[0], d))
    for i, s in enumerate(scale * qd @ kd.T):
        m, total = -np.inf, 0.0
        for j0 in range(0, n, tile):
            st = s[j0 : j0 + tile]
            m_new = max(m, st.max())
            alpha, m = np.exp(m - m_new), m_new
            p = np.exp(st - m)
            total = total * alpha + p.sum()
            out[i] *= alpha
            p32, dvt = p.astype(np.float32), dv[j0 : j0 + tile]
            t = p32[:, None] * dvt  # [positions, blocks]
            w_max = p32.max() * dvt.max(axis=0)
            inv = np.where(w_max > 0, one / np.where(w_max > 0, w_max, 1), 0).astype(np.float32)
            w = np.rint(t * inv).astype(np.int64)
            sums = np.einsum("jb,jbe->be", w, codes[j0 : j0 + tile])
            out[i] += ((w_max / one)[:, None].astype(np.float64) * sums).reshape(-1)
        out[i] /= total
    return out


ATTENTION_INT = {8: _core.attention_q8, 4: _core.attention_q4}


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize(
    ("n_q", "n", "d"), [(1, 1, 32), (4, 7, 32), (4, 130, 256), (3, 17, 64), (4, 777, 64)]
)
def test_attention_q8(isa: str, bits: int, n_q: int, n: int, d: int) -> None:
    """The int8 and 4-bit caches: rows through their blocks (as the model stores them), scores
    against the query in int16 or int8 (integer dot products), the weighted sum as the table defines
    it; the kernel's only differences are summation orders and its exp."""
    rng = np.random.default_rng(n_q * 1000 + n + d)
    q = rng.standard_normal((n_q, d)).astype(np.float32)
    k = rng.standard_normal((n, d)).astype(np.float32)
    v = 3 * rng.standard_normal((n, d)).astype(np.float32)
    if n > 1:
        k[0, :32] = 0.0  # an all-zero block has scale 0
    got = ATTENTION_INT[bits](q, k, v, 0.25, isa=isa)

    vd = _dequantized(v, bits)
    # the test would notice a kernel reading floats, or the other cache's codes
    assert np.abs(_dequantized(k, bits) - k).max() > 1e-3
    want = _reference_q8(q, k, v, 0.25, isa, bits)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * np.abs(vd).max())
    if bits == 4 and n > 1:
        assert np.abs(got - _reference_q8(q, k, v, 0.25, isa, 8)).max() > 1e-2


@pytest.mark.parametrize(("n_q", "n", "d"), [(4, 130, 256), (4, 777, 64), (1, 600, 32)])
def test_attention_q8_integer_weights_are_a_small_part_of_the_error(
    n_q: int, n: int, d: int
) -> None:
    """The int16 weights move the output by less than a tenth of what the int8 cache's
    rounding does (float64 attention on the floats against float64 on the dequantized
    values), and by more than nothing: the reference really rounds them."""
    rng = np.random.default_rng(n + d)
    q = rng.standard_normal((n_q, d)).astype(np.float32)
    k = rng.standard_normal((n, d)).astype(np.float32)
    v = 3 * rng.standard_normal((n, d)).astype(np.float32)
    floats = _reference_q8(q, k, v, 0.25, "ref")
    weights = _reference_q8(q, k, v, 0.25, "avx512_vnni")
    cache_error = np.abs(_reference(q, k, v, 0.25) - floats).max()
    assert 0 < np.abs(weights - floats).max() <= 0.1 * cache_error


@pytest.mark.parametrize("bits", [8, 4])
def test_attention_q8_integer_sums_at_their_largest(isa: str, bits: int) -> None:
    """Every product at its largest (query codes +-32767 and key codes +-127; against 4-bit
    keys +-127 and nibbles 15, which avx2 and neon sum in int16 over a block), all of one sign
    per row: a block's sums cannot overflow nor lose a bit, whatever the ISA's lanes."""
    d, n = 256, 40
    q = np.full((4, d), 3.0, np.float32)
    q[1] *= -1
    q[2, ::2] = -3.0
    q[3, :128] = 1e4  # a large outlier half: one scale per row must hold both halves
    k = np.where(np.arange(n)[:, None] % 2 == 0, 1.0, -1.0) * np.ones((n, d), np.float32)
    v = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    got = ATTENTION_INT[bits](q, k, v, 1e-3, isa=isa)
    np.testing.assert_allclose(got, _reference_q8(q, k, v, 1e-3, isa, bits), rtol=1e-4, atol=1e-5)


def test_int8_cache_holds_the_values_of_q8a() -> None:
    """The int8 cache's keys and values, each in its groups' order: q8a's scales and codes per
    block (so the cache holds what it held with q8a blocks), every value within half a step;
    NaN reads back as zero, nothing crashes."""
    rng = np.random.default_rng(3)
    cases = [
        rng.standard_normal(256).astype(np.float32) * 4,
        np.float32(1e-30) * rng.standard_normal(64).astype(np.float32),  # subnormal scales
        np.zeros(32, np.float32),
        np.tile(np.float32([127, -127, 63.5, -1e5]), 8),
        (rng.standard_normal(96) * 10.0 ** rng.integers(-8, 8, 96)).astype(np.float32),
    ]
    for i, x in enumerate(cases):
        kd, kq, vd, vq = _core.quantize_kv_q8(x, j=(7 * i) % 16)
        with np.errstate(over="ignore", invalid="ignore"):  # a subnormal d overflows 1/d
            nd, _, nq = quantize_q8a(x)
        for d, q in ((kd, kq), (vd, vq)):
            np.testing.assert_array_equal(d.view(np.uint32), nd.view(np.uint32))
            np.testing.assert_array_equal(q, nq)
            err = np.abs(d[:, None].astype(np.float64) * q - x.reshape(-1, 32))
            assert (err <= d[:, None].astype(np.float64) * (0.5 + 1e-6) + 1e-45).all()
    kd, kq, vd, vq = _core.quantize_kv_q8(np.full(32, np.nan, np.float32), j=15)
    for d, q in ((kd, kq), (vd, vq)):
        assert d[0] == 0 and (d[:, None] * q == 0).all()
    with pytest.raises(RuntimeError, match="j in 0..15"):
        _core.quantize_kv_q8(cases[0], j=16)


def test_4bit_cache_holds_its_blocks() -> None:
    """The 4-bit cache's keys and values, each in its nibbles' order, read back as the
    definition's scales and codes (amax / 7, within +-7), every value within half a step; NaN
    reads back as zero."""
    rng = np.random.default_rng(4)
    cases = [
        rng.standard_normal(256).astype(np.float32) * 4,
        np.float32(1e-30) * rng.standard_normal(64).astype(np.float32),
        np.zeros(32, np.float32),
        np.tile(np.float32([7, -7, 3.5, -1e5]), 8),
        (rng.standard_normal(96) * 10.0 ** rng.integers(-8, 8, 96)).astype(np.float32),
    ]
    for i, x in enumerate(cases):
        kd, kq, vd, vq = _core.quantize_kv_q4(x, j=(5 * i + 3) % 16)
        with np.errstate(over="ignore", invalid="ignore"):
            nd, nq = _cache_blocks(x, 4)
        for d, q in ((kd, kq), (vd, vq)):
            np.testing.assert_array_equal(d.view(np.uint32), nd.view(np.uint32))
            np.testing.assert_array_equal(q, nq)
            assert np.abs(q).max() <= 7
            err = np.abs(d[:, None].astype(np.float64) * q - x.reshape(-1, 32))
            assert (err <= d[:, None].astype(np.float64) * (0.5 + 1e-6) + 1e-45).all()
    # Every block's largest element takes an end of the range, exactly.
    q = _core.quantize_kv_q4(cases[0])[1]
    assert (np.abs(q) == 7).any(axis=1).all()
    kd, kq, vd, vq = _core.quantize_kv_q4(np.full(32, np.nan, np.float32), j=15)
    for d, q in ((kd, kq), (vd, vq)):
        assert d[0] == 0 and (d[:, None] * q == 0).all()
    with pytest.raises(RuntimeError, match="j in 0..15"):
        _core.quantize_kv_q4(cases[0], j=16)


@pytest.mark.parametrize("bits", [8, 4])
def test_attention_q8_needs_whole_blocks(bits: int) -> None:
    x = np.zeros((2, 48), np.float32)
    with pytest.raises(RuntimeError, match="d % 32"):
        ATTENTION_INT[bits](x, x, x, 1.0)


def _reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    s = scale * q.astype(np.float64) @ k.T.astype(np.float64)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p @ v.astype(np.float64)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_attention_max_moves_between_tiles(isa: str, where: str) -> None:
    """One position per query far above the rest in the first, a middle or the ragged last
    tile: the running max grows (or not) across tiles and the rescaling of the earlier tiles'
    sums and outputs must carry it."""
    tile = _core.ATTENTION_TILE
    n, d = 3 * tile + 37, 64
    rng = np.random.default_rng(7)
    q = rng.standard_normal((4, d)).astype(np.float32)
    k = 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    v = rng.standard_normal((n, d)).astype(np.float32)
    hot = {"first": 5, "middle": tile + 100, "last": n - 3}[where]
    k[hot] = 4.0 * q[0] / np.linalg.norm(q[0])  # query 0's scores: about +8 there
    k[hot - 1] = -k[hot]
    got = _core.attention(q, k, v, 1.0, isa=isa)
    np.testing.assert_allclose(
        got, _reference(q, k, v, 1.0), rtol=1e-4, atol=2e-5 * np.abs(v).max()
    )


def test_attention_scratch_is_one_tile() -> None:
    tile = _core.ATTENTION_TILE
    assert _core.attention_scratch(4, 10) == 40
    assert _core.attention_scratch(4, tile) == 4 * tile
    assert _core.attention_scratch(4, 262144) == 4 * tile


@pytest.mark.parametrize("kv", ["f16", "f32", "q8", "q4"])
@pytest.mark.parametrize(
    ("n_t", "n_q", "n", "d"),
    [
        (1, 4, 1, 32),
        (3, 4, 3, 32),
        (6, 4, 260, 256),  # the tokens' last positions straddle a tile boundary
        (5, 3, 17, 64),
        (13, 1, 40, 32),
        (7, 5, 513, 96),
        (32, 4, 700, 32),
    ],
)
def test_attention_tokens(isa: str, kv: str, n_t: int, n_q: int, n: int, d: int) -> None:
    """Several consecutive tokens per call (prefill): token r sees the first n - (n_t - 1 - r)
    positions (causal), matches float64 numpy, and equals bit for bit the one-token call on its
    own positions, so how a prompt is cut into chunks and work items cannot change a logit."""
    rng = np.random.default_rng(n_t * 7 + n_q * 1000 + n + d)
    q = rng.standard_normal((n_t, n_q, d)).astype(np.float32)
    k = rng.standard_normal((n, d)).astype(np.float32)
    v = rng.standard_normal((n, d)).astype(np.float32)
    reference = _reference
    if kv == "f16":
        k16, v16 = k.astype(np.float16), v.astype(np.float16)
        k, v = k16.astype(np.float32), v16.astype(np.float32)

        def run(qq: np.ndarray, m: int) -> np.ndarray:
            return _core.attention(
                qq, k16[:m].view(np.uint16), v16[:m].view(np.uint16), 0.25, isa=isa
            )
    elif kv == "f32":

        def run(qq: np.ndarray, m: int) -> np.ndarray:
            return _core.attention(qq, k[:m], v[:m], 0.25, isa=isa)
    else:
        bits = 8 if kv == "q8" else 4

        def run(qq: np.ndarray, m: int) -> np.ndarray:
            return ATTENTION_INT[bits](qq, k[:m], v[:m], 0.25, isa=isa)

        def reference(qq: np.ndarray, kk: np.ndarray, vv: np.ndarray, s: float) -> np.ndarray:
            return _reference_q8(qq, kk, vv, s, isa, bits)

    got = run(q, n)
    assert got.shape == q.shape
    for r in range(n_t):
        m = n - (n_t - 1 - r)
        np.testing.assert_array_equal(got[r], run(q[r], m), err_msg=f"token {r} of {n_t}")
        np.testing.assert_allclose(
            got[r], reference(q[r], k[:m], v[:m], 0.25), rtol=1e-4, atol=2e-5 * np.abs(v).max()
        )


def test_attention_tokens_need_positions() -> None:
    q = np.zeros((4, 2, 16), np.float32)
    kv = np.zeros((3, 16), np.float32)
    with pytest.raises(RuntimeError, match="n >= max"):
        _core.attention(q, kv, kv, 1.0)
