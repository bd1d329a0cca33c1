"""The native export quantizer (csrc/quant/quantize_inl.h) writes the bytes of the numba/numpy
quantizers of `formats.quant`: every packed format, odd shapes, row tails, chunked and threaded;
and the goldens the C++ test executable checks (tests/csrc/test_quantize.cc) are these bytes."""

from __future__ import annotations

import numpy as np
import pytest

from qwen_edge.backends import native
from qwen_edge.formats import _quant_search, quant
from qwen_edge.formats.quant import FormatError

PACKED = quant.PACKED_FORMATS
SHAPES = [(1, 32), (7, 32), (8, 64), (9, 96), (17, 160), (24, 256), (33, 1024)]


def _weights(rows: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, k)).astype(np.float32) * np.float32(0.02)
    w[0, : min(k, 40)] *= 50  # a row with large values
    if rows > 2:
        w[2] = 0.0  # an all-zero row
    if rows > 3:
        w[3, :32] = 0.25  # a constant block
        w[3, 32:] = np.abs(w[3, 32:])  # positive blocks (minimum clamped to 0)
    if rows > 4:
        w[4, 7] = 1e-30  # a lone tiny value
        w[4, 8] = -3e-8  # near the f16 subnormal range
    if rows > 5:
        w[5] = -np.abs(w[5])  # negative blocks
    if rows > 6:
        w[6] *= 1e4  # scales beyond f16: clipped
    return w


@pytest.fixture(scope="module")
def nq() -> quant.NativeQuantizer:
    if not native.available():
        pytest.skip("the native core is not built")
    return native.quantizer(threads=3)


@pytest.mark.parametrize("fmt", PACKED)
@pytest.mark.parametrize("rows,k", SHAPES)
def test_native_equals_python(fmt: str, rows: int, k: int, nq: quant.NativeQuantizer) -> None:
    w = _weights(rows, k, rows * 1000 + k)
    ref = quant.quantize(fmt, w)
    for isa in native.quantizer_isas():  # every variant this CPU runs (avx2, base)
        got = quant.quantize(fmt, w, native=native.quantizer(3, isa))
        assert got.dtype == np.uint8 and got.shape == ref.shape
        assert np.array_equal(got, ref), (isa, np.flatnonzero(got != ref)[:10])


@pytest.mark.parametrize("fmt", PACKED)
@pytest.mark.parametrize("rows,k", [(9, 96), (33, 1024)])
def test_native_equals_python_with_importance(
    fmt: str, rows: int, k: int, nq: quant.NativeQuantizer
) -> None:
    """Activation-aware quantization: the weighted searches write the same bytes natively."""
    w = _weights(rows, k, rows + k)
    imp = np.exp(np.random.default_rng(k).standard_normal(k) * 1.5).astype(np.float32)
    ref = quant.quantize(fmt, w, importance=imp)
    if fmt != "q8g32":
        assert not np.array_equal(ref, quant.quantize(fmt, w))
    for isa in native.quantizer_isas():
        got = quant.quantize(fmt, w, native=native.quantizer(3, isa), importance=imp)
        assert np.array_equal(got, ref), (isa, np.flatnonzero(got != ref)[:10])
    out = np.zeros(quant.packed_size(fmt, rows, k), np.uint8)
    with pytest.raises(RuntimeError, match="importance"):
        native.core().quantize_into(fmt, w, rows, 0, out, 1, "", np.ones(k + 32, np.float32))
    bad = imp.copy()
    bad[3] = 0.0
    with pytest.raises(RuntimeError, match="positive"):
        native.core().quantize_into(fmt, w, rows, 0, out, 1, "", bad)


def test_quantizer_isas(nq: quant.NativeQuantizer) -> None:
    isas = native.quantizer_isas()
    assert isas[-1] == "base" and set(isas) <= {"avx2", "base"}
    out = np.zeros(quant.packed_size("q4k", 8, 32), np.uint8)
    with pytest.raises(RuntimeError, match="not available"):
        native.core().quantize_into("q4k", np.ones((8, 32), np.float32), 8, 0, out, 1, "sse9")


@pytest.mark.parametrize("fmt", PACKED)
def test_native_equals_numpy_search(
    fmt: str, nq: quant.NativeQuantizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against the numpy searches too (the fallback when numba is absent)."""
    monkeypatch.setenv("QWEN_EDGE_NO_NUMBA", "1")
    assert not _quant_search._use_numba()
    w = _weights(13, 128, 3)
    assert np.array_equal(quant.quantize(fmt, w, native=nq), quant.quantize(fmt, w))
    imp = np.linspace(0.1, 9.0, 128, dtype=np.float32)
    assert np.array_equal(
        quant.quantize(fmt, w, native=nq, importance=imp), quant.quantize(fmt, w, importance=imp)
    )


@pytest.mark.parametrize("fmt", PACKED)
def test_native_chunks_and_threads(
    fmt: str, nq: quant.NativeQuantizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of rows (a tail chunk of 5 rows) and any thread count give the same bytes."""
    w = _weights(77, 64, 9)
    ref = quant.quantize(fmt, w)
    monkeypatch.setattr(quant, "_ROWS_PER_CHUNK", 24)
    for threads in (1, 2, 7):
        got = quant.quantize(fmt, w, native=native.quantizer(threads))
        assert np.array_equal(got, ref), threads


@pytest.mark.parametrize("fmt", PACKED)
def test_native_rejects_nan_and_bad_shapes(fmt: str, nq: quant.NativeQuantizer) -> None:
    w = _weights(9, 64, 1)
    w[8, 3] = np.nan
    with pytest.raises(FormatError, match="NaN"):
        quant.quantize(fmt, w, native=nq)
    w[8, 3] = np.inf
    with pytest.raises(FormatError, match="NaN"):
        quant.quantize(fmt, w, native=nq)
    with pytest.raises(FormatError):
        quant.quantize(fmt, np.ones((4, 33), np.float32), native=nq)
    core = native.core()
    out = np.zeros(quant.packed_size(fmt, 16, 64), np.uint8)
    with pytest.raises(RuntimeError, match="multiple of 8"):
        core.quantize_into(fmt, np.ones((8, 64), np.float32), 16, 4, out)
    with pytest.raises(RuntimeError, match="contiguous bytes"):
        core.quantize_into(fmt, np.ones((8, 64), np.float32), 16, 0, out[:-1])


def test_f16_rounding_matches_numpy(nq: quant.NativeQuantizer) -> None:
    """q4g32's stored scale is the searched float32 scale rounded to half: compare on blocks
    whose scales cover the subnormal, tie and clipped ranges of f16."""
    rng = np.random.default_rng(4)
    mags = np.float32(10.0) ** rng.uniform(-9, 6, 256).astype(np.float32)
    w = (rng.standard_normal((256, 64)).astype(np.float32) * mags[:, None]).astype(np.float32)
    for fmt in ("q4g32", "q8g32", "q4ag32"):
        assert np.array_equal(quant.quantize(fmt, w, native=nq), quant.quantize(fmt, w)), fmt


# --- the goldens of tests/csrc/test_quantize.cc ---------------------------------------------------
def golden_input(rows: int, k: int) -> np.ndarray:
    """The C++ test's input: an LCG's values on a 1/256 grid (exact in float32 everywhere)."""
    out = np.empty(rows * k, np.float32)
    state = 12345
    for i in range(rows * k):
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        v = ((state >> 33) % 2001) - 1000
        out[i] = np.float32(v) / np.float32(256 if i % 97 else 8)
    return out.reshape(rows, k)


def fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) % (1 << 64)
    return h


GOLDEN_SHAPE = (11, 96)
GOLDENS = {  # fnv1a-64 of quantize(fmt, golden_input(11, 96)); also in test_quantize.cc
    "q8g32": 0x2455981FCE8E2C86,
    "q4g32": 0x97E81746F9DA0289,
    "q4ag32": 0x3CA714F141DC38BB,
    "q4k": 0x9C176A115363E119,
    "q6k": 0x2CF10F289AF51432,
}


@pytest.mark.parametrize("fmt", PACKED)
def test_goldens_of_the_native_test(fmt: str) -> None:
    data = quant.quantize(fmt, golden_input(*GOLDEN_SHAPE)).tobytes()
    assert fnv1a(data) == GOLDENS[fmt], hex(fnv1a(data))
