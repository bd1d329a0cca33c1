"""qwen_edge.quant: sizes, the documented byte layout, bit-exact dequantization against the C++
reference, the quantizers' errors, and numba == numpy."""

from __future__ import annotations

import numpy as np
import pytest

from qwen_edge.backends.native import core
from qwen_edge.formats import _quant_search, quant
from qwen_edge.formats.quant import FormatError

_core = core()
PACKED = quant.PACKED_FORMATS
SHAPES = [(1, 32), (7, 32), (8, 64), (9, 96), (17, 160), (24, 256)]


def _random_quantized(fmt: str, rows: int, k: int, rng: np.random.Generator) -> quant.Quantized:
    nb = k // 32
    hi = {"q8g32": 256, "q6k": 64}.get(fmt, 16)
    codes = rng.integers(0, hi, (rows, k)).astype(np.uint8)
    if fmt == "q8g32":
        codes[codes == 0] = 1  # offset binary holds q in -127..127
    if fmt == "q6k":  # every code and sub-scale, signed row factors
        sc = rng.integers(-128, 128, (rows, nb)).astype(np.int8)
        return quant.Quantized(fmt, codes, sc, None, rng.uniform(-1e-2, 1e-2, rows).astype("f4"))
    if fmt == "q4k":
        sc = rng.integers(0, 256, (rows, nb)).astype(np.uint8)
        mn = rng.integers(0, 256, (rows, nb)).astype(np.uint8)
        rd = rng.uniform(1e-4, 1e-2, rows).astype(np.float32)
        rm = rng.uniform(1e-4, 1e-2, rows).astype(np.float32)
        return quant.Quantized(fmt, codes, sc, mn, rd, rm)
    d = rng.standard_normal((rows, nb)).astype(np.float16)
    m = rng.standard_normal((rows, nb)).astype(np.float16) if fmt == "q4ag32" else None
    return quant.Quantized(fmt, codes, d, m)


def _doc_pack(q: quant.Quantized) -> bytes:
    """docs/weight-formats.md read literally, one byte at a time (independent of quant.pack)."""
    rows, k = q.shape
    lay = quant.packed_layout(q.fmt, rows, k)
    G, nb = lay.groups, lay.blocks
    out = bytearray(lay.total_bytes)

    def code(r: int, col: int) -> int:
        return int(q.codes[r, col]) if r < rows else 0

    rec = {"q8g32": 256, "q6k": 192}.get(q.fmt, 128)
    for g in range(G):
        for b in range(nb):
            base = (g * nb + b) * rec
            for i in range(32):
                r = 8 * g + i // 4
                if q.fmt == "q8g32":
                    for s in range(8):
                        out[base + 32 * s + i] = code(r, 32 * b + 4 * s + i % 4)
                else:
                    for c in range(4):
                        lo = code(r, 32 * b + 4 * (2 * c) + i % 4) & 15
                        hi = code(r, 32 * b + 4 * (2 * c + 1) + i % 4) & 15
                        out[base + 32 * c + i] = lo | (hi << 4)
                if q.fmt == "q6k":  # high 2 bits: chunk h, bits 2t..2t+1 = step 4h + t
                    for h in range(2):
                        byte = 0
                        for t in range(4):
                            byte |= (code(r, 32 * b + 4 * (4 * h + t) + i % 4) >> 4) << (2 * t)
                        out[base + 128 + 32 * h + i] = byte
    srec = {"q4ag32": 32, "q6k": 8}.get(q.fmt, 16)
    for g in range(G):
        for b in range(nb):
            base = lay.scales_offset + (g * nb + b) * srec
            for rr in range(8):
                r = 8 * g + rr
                if r >= rows:
                    continue
                if q.fmt == "q6k":
                    out[base + rr] = int(q.d[r, b]) & 0xFF  # int8, two's complement
                elif q.fmt == "q4k":
                    out[base + rr] = int(q.d[r, b])
                    out[base + 8 + rr] = int(q.m[r, b])
                else:
                    out[base + 2 * rr : base + 2 * rr + 2] = np.float16(q.d[r, b]).tobytes()
                    if q.fmt == "q4ag32":
                        m16 = np.float16(q.m[r, b]).tobytes()
                        out[base + 16 + 2 * rr : base + 18 + 2 * rr] = m16
    if q.fmt == "q6k":
        for r in range(rows):
            base = lay.row_params_offset + (r // 8) * 32 + 4 * (r % 8)
            out[base : base + 4] = np.float32(q.row_d[r]).tobytes()
    if q.fmt == "q4k":
        for r in range(rows):
            base = lay.row_params_offset + (r // 8) * 64
            out[base + 4 * (r % 8) : base + 4 * (r % 8) + 4] = np.float32(q.row_d[r]).tobytes()
            out[base + 32 + 4 * (r % 8) : base + 36 + 4 * (r % 8)] = np.float32(
                q.row_m[r]
            ).tobytes()
    return bytes(out)


@pytest.mark.parametrize("fmt", PACKED)
@pytest.mark.parametrize(("rows", "k"), [*SHAPES, (1000, 4096), (248, 1024)])
def test_packed_size_matches_core(fmt: str, rows: int, k: int) -> None:
    assert quant.packed_size(fmt, rows, k) == _core.packed_size(fmt, rows, k)
    assert quant.packed_size(fmt, rows, k) % 64 == 0


def test_bits_per_weight() -> None:
    assert quant.bits_per_weight("q8g32", (4096, 4096)) == pytest.approx(8.5)
    assert quant.bits_per_weight("q4g32", (4096, 4096)) == pytest.approx(4.5)
    assert quant.bits_per_weight("q4ag32", (4096, 4096)) == pytest.approx(5.0)
    assert quant.bits_per_weight("q4k", (4096, 1024)) == pytest.approx(4.5 + 64 / 1024)
    assert quant.bits_per_weight("q6k", (4096, 1024)) == pytest.approx(6.25 + 32 / 1024)
    assert quant.bits_per_weight("bf16", (3, 5)) == 16


@pytest.mark.parametrize("fmt", PACKED)
def test_bad_shapes_and_formats(fmt: str) -> None:
    for rows, k in [(0, 32), (4, 0), (4, 24), (4, 33)]:
        with pytest.raises(FormatError, match="multiple of 32"):
            quant.packed_size(fmt, rows, k)
    with pytest.raises(FormatError, match="multiple of 32"):
        quant.quantize(fmt, np.zeros((4, 24), np.float32))
    with pytest.raises(FormatError, match="2-D"):
        quant.quantize(fmt, np.zeros((4, 2, 32), np.float32))
    with pytest.raises(FormatError, match="NaN"):
        quant.quantize(fmt, np.full((1, 32), np.nan, np.float32))
    with pytest.raises(FormatError, match="needs"):
        quant.dequantize(fmt, np.zeros(10, np.uint8), (8, 32))
    with pytest.raises(FormatError, match="unknown weight format"):
        quant.quantize("q3", np.zeros((8, 32), np.float32))


@pytest.mark.parametrize("fmt", PACKED)
@pytest.mark.parametrize(("rows", "k"), SHAPES)
def test_pack_is_the_documented_layout(fmt: str, rows: int, k: int) -> None:
    rng = np.random.default_rng([rows, k, len(fmt)])
    q = _random_quantized(fmt, rows, k, rng)
    packed = quant.pack(q)
    assert packed.tobytes() == _doc_pack(q)
    back = quant.unpack(fmt, packed, rows, k)
    assert np.array_equal(back.codes, q.codes)
    assert np.array_equal(back.d, q.d)
    if q.m is not None:
        assert np.array_equal(back.m, q.m)
    if q.row_d is not None:
        assert np.array_equal(back.row_d, q.row_d)
    if q.row_m is not None:
        assert np.array_equal(back.row_m, q.row_m)


@pytest.mark.parametrize("fmt", PACKED)
@pytest.mark.parametrize(("rows", "k"), [*SHAPES, (61, 1024)])
def test_dequantize_bit_exact_with_core(fmt: str, rows: int, k: int) -> None:
    rng = np.random.default_rng([rows, k, 7])
    for packed in (
        quant.pack(_random_quantized(fmt, rows, k, rng)),
        quant.quantize(fmt, rng.standard_normal((rows, k)).astype(np.float32)),
    ):
        ours = quant.dequantize(fmt, packed, (rows, k))
        assert ours.dtype == np.float32 and ours.shape == (rows, k)
        for isa in _core.available_isas():
            theirs = _core.dequantize(fmt, packed, rows, k, isa=isa)
            assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32)), isa


def test_dequantize_follows_the_formula() -> None:
    """One hand-computed value per format, from the table in docs/weight-formats.md."""
    rng = np.random.default_rng(3)
    for fmt in PACKED:
        q = _random_quantized(fmt, 9, 64, rng)
        w = quant.dequantize(fmt, quant.pack(q), (9, 64))
        r, col = 8, 37
        c, b = int(q.codes[r, col]), col // 32
        f32 = np.float32
        if fmt == "q8g32":
            want = f32(q.d[r, b]) * f32(c - 128)
        elif fmt == "q4g32":
            want = f32(q.d[r, b]) * f32(c - 8)
        elif fmt == "q4ag32":
            want = f32(q.d[r, b]) * f32(c) + f32(q.m[r, b])
        elif fmt == "q6k":
            want = q.row_d[r] * f32(q.d[r, b]) * f32(c - 32)
        else:
            want = q.row_d[r] * f32(q.d[r, b]) * f32(c) - q.row_m[r] * f32(q.m[r, b])
        assert w[r, col] == want, fmt


@pytest.mark.parametrize("fmt", ["f32", "f16", "bf16"])
def test_plain_formats(fmt: str) -> None:
    x = np.array([[1.0, -2.5, 3.0e-3], [0.0, 65504.0, 1 + 2**-9]], np.float32)
    data = quant.quantize(fmt, x)
    assert data.size == quant.tensor_nbytes(fmt, x.shape)
    back = quant.dequantize(fmt, data, x.shape)
    if fmt == "f32":
        assert np.array_equal(back, x)
    elif fmt == "f16":
        assert np.array_equal(back, x.astype(np.float16).astype(np.float32))
    else:
        # bf16 keeps 8 significant bits, round to nearest even: 1 + 2^-9 -> 1.0
        assert back[1, 2] == 1.0 and back[0, 1] == -2.5
        assert np.all(np.abs(back - x) <= np.abs(x) * 2**-8)


def test_bf16_round_to_nearest_even() -> None:
    bits = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x7F7FFFFF], np.uint32)
    got = quant.f32_to_bf16(bits.view(np.float32))
    assert got.tolist() == [0x3F80, 0x3F82, 0x3F81, 0x7F80]  # tie->even, tie->even, up, inf
    assert np.isnan(quant.bf16_to_f32(quant.f32_to_bf16(np.array([np.nan], np.float32))))[0]


def test_f16_overflow_is_an_error() -> None:
    with pytest.raises(FormatError, match="overflow f16"):
        quant.quantize("f16", np.array([1e6], np.float32))


# --- quantizers -----------------------------------------------------------------------------------
# Relative RMS error on N(0, 1) weights, measured once (rows=512, k=1024, seed 1) and given ~3 %
# headroom: q8g32 0.00523, q4g32 0.0809, q4ag32 0.0695, q4k 0.0697, q6k 0.0202.
REL_RMSE = {"q8g32": 0.0055, "q4g32": 0.083, "q4ag32": 0.0715, "q4k": 0.0715, "q6k": 0.0208}


def _rel_rmse(a: np.ndarray, w: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - w) ** 2) / np.mean(w**2)))


def _absmax_rtn(w: np.ndarray, nmax: int = 8) -> np.ndarray:
    """The plain scheme the searches must beat: d = absmax / (nmax - 0.5), round, no search."""
    x = w.reshape(w.shape[0], -1, 32)
    d = (np.abs(x).max(axis=2, keepdims=True) / (nmax - 0.5)).astype(np.float16).astype(np.float32)
    return (d * np.clip(np.round(x / d), -nmax, nmax - 1)).reshape(w.shape)


@pytest.fixture(scope="module")
def gaussian() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((512, 1024)).astype(np.float32)


@pytest.mark.parametrize("fmt", PACKED)
def test_quantizer_error(fmt: str, gaussian: np.ndarray) -> None:
    w = gaussian
    err = _rel_rmse(quant.dequantize(fmt, quant.quantize(fmt, w), w.shape), w)
    assert err < REL_RMSE[fmt]
    if fmt == "q6k":  # the search and the int8 sub-scales against plain 6-bit absmax rounding
        assert err < 0.92 * _rel_rmse(_absmax_rtn(w, 32), w)
    elif fmt != "q8g32":
        assert err < 0.92 * _rel_rmse(_absmax_rtn(w), w)
    else:  # the least-squares refit beats plain absmax rounding (as Q8_0 does it)
        x = w.reshape(w.shape[0], -1, 32)
        d = (np.abs(x).max(axis=2, keepdims=True) / 127).astype(np.float16).astype(np.float32)
        plain = (d * np.clip(np.round(x / d), -127, 127)).reshape(w.shape)
        assert err < 0.985 * _rel_rmse(plain, w)


@pytest.mark.parametrize("fmt", PACKED)
def test_quantizer_edge_blocks(fmt: str) -> None:
    w = np.zeros((9, 128), np.float32)
    w[1] = 3.0  # constant
    w[2, :32] = np.linspace(0.5, 2.0, 32)  # all positive
    w[3, :32] = -np.linspace(0.5, 2.0, 32)  # all negative
    w[4, 5] = 1e-30  # a single tiny value
    w[5] = np.random.default_rng(0).standard_normal(128) * 1e3
    back = quant.dequantize(fmt, quant.quantize(fmt, w), w.shape)
    assert np.all(back[0] == 0) and np.all(back[6:] == 0)
    tol = 0.01 if fmt == "q8g32" else 0.08
    for r in (1, 2, 3, 5):
        scale = np.abs(w[r]).max()
        assert np.max(np.abs(back[r] - w[r])) <= tol * scale, r


def test_chunked_quantize_equals_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    w = np.random.default_rng(5).standard_normal((77, 64)).astype(np.float32)
    whole = {f: quant.quantize(f, w) for f in PACKED}
    monkeypatch.setattr(quant, "_ROWS_PER_CHUNK", 16)
    for f in PACKED:
        assert np.array_equal(quant.quantize(f, w), whole[f]), f


def test_numba_and_numpy_agree() -> None:
    pytest.importorskip("numba")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((64, 8, 32)).astype(np.float32)
    x[0, 0] = 0
    x[1, 1] = 2.0
    x[2, 2] = np.abs(x[2, 2])
    for nmax in (8, 32, 127):
        a = _quant_search.symmetric_scales(x, nmax, backend="numba")
        b = _quant_search.symmetric_scales(x, nmax, backend="numpy")
        assert np.array_equal(a, b)
    s1, m1 = _quant_search.affine_scales(x, 15, backend="numba")
    s2, m2 = _quant_search.affine_scales(x, 15, backend="numpy")
    assert np.array_equal(s1, s2) and np.array_equal(m1, m2)


def test_weighted_searches_agree_and_ones_change_nothing() -> None:
    """numba and numpy agree with importance weights too, and weights of 1 give exactly the
    unweighted scales (so exports without calibration keep their bytes)."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((40, 8, 32)).astype(np.float32)
    x[0, 0] = 0
    w = np.exp(rng.standard_normal((8, 32)) * 1.5)
    backends = ["numpy"] + (["numba"] if _quant_search._use_numba() else [])
    sym = [_quant_search.symmetric_scales(x, 32, backend=b, weights=w) for b in backends]
    aff = [_quant_search.affine_scales(x, 15, backend=b, weights=w) for b in backends]
    for s, (s1, m1) in zip(sym[1:], aff[1:], strict=True):
        assert np.array_equal(s, sym[0])
        assert np.array_equal(s1, aff[0][0]) and np.array_equal(m1, aff[0][1])
    for b in backends:
        ones = np.ones((8, 32))
        assert np.array_equal(
            _quant_search.symmetric_scales(x, 8, backend=b, weights=ones),
            _quant_search.symmetric_scales(x, 8, backend=b),
        )
        a1, a2 = _quant_search.affine_scales(x, 15, backend=b, weights=ones)
        b1, b2 = _quant_search.affine_scales(x, 15, backend=b)
        assert np.array_equal(a1, b1) and np.array_equal(a2, b2)


@pytest.mark.parametrize("fmt", ["q4g32", "q4ag32", "q4k", "q6k"])
def test_importance_lowers_the_weighted_error(fmt: str) -> None:
    """With importance, the error weighted by it (what the activations see: E[(dW x)^2] =
    sum dW^2 E[x^2] for independent channels) is lower than the unweighted search's, while
    the plain error rises; q8g32 ignores importance."""
    rng = np.random.default_rng(13)
    w = rng.standard_normal((256, 256)).astype(np.float32)
    imp = np.ones(256, np.float32)
    imp[rng.choice(256, 24, replace=False)] = 30.0  # outlier channels, as trained models have
    plain = quant.dequantize(fmt, quant.quantize(fmt, w), w.shape) - w
    weighted = quant.dequantize(fmt, quant.quantize(fmt, w, importance=imp), w.shape) - w
    werr = lambda d: float(np.sum(d * d * imp))  # noqa: E731
    assert werr(weighted) < 0.93 * werr(plain)
    assert np.sum(weighted**2) > np.sum(plain**2)
    q8 = quant.quantize("q8g32", w)
    assert np.array_equal(quant.quantize("q8g32", w, importance=imp), q8)
    with pytest.raises(FormatError, match="positive"):
        quant.quantize(fmt, w, importance=np.zeros(256, np.float32))
    with pytest.raises(FormatError, match="entries"):
        quant.quantize(fmt, w, importance=np.ones(128, np.float32))


# --- activations ----------------------------------------------------------------------------------
def test_quantize_q8a_matches_core() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal(256).astype(np.float32)
    x[:32] = 0  # a zero block
    x[32:64] = np.arange(32, dtype=np.float32) - 15.5  # halves: round away from zero
    for isa in _core.available_isas():
        d, s, q = quant.quantize_q8a(x)
        cd, cs, cq = _core.quantize_q8a(x, isa=isa)
        assert np.array_equal(d, cd) and np.array_equal(s, cs) and np.array_equal(q, cq)


@pytest.mark.parametrize("fmt", PACKED)
def test_matmul_q8a_matches_dequantized_product(fmt: str) -> None:
    rng = np.random.default_rng(4)
    rows, k, m = 13, 96, 3
    w = rng.standard_normal((rows, k)).astype(np.float32)
    data = quant.quantize(fmt, w)
    x = rng.standard_normal((m, k)).astype(np.float32)
    want = quant.fake_quantize_q8a(x).astype(np.float64) @ quant.dequantize(
        fmt, data, (rows, k)
    ).T.astype(np.float64)
    bound = 1e-5 * (np.abs(x) @ np.abs(w).T) + 1e-5
    for isa in _core.available_isas():
        got = _core.matmul_q8a(fmt, data, rows, k, x, isa=isa)
        assert np.all(np.abs(got - want) <= bound), isa
        got1 = _core.matmul_q8a(fmt, data, rows, k, x[:1], isa=isa)
        assert np.all(np.abs(got1 - want[:1]) <= bound[:1]), isa
