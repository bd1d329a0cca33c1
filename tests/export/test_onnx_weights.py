"""The MatMulNBits form of stored tensors: the model file's weights, bit for bit where
MatMulNBits can hold them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qwen_edge.export import onnx_weights
from qwen_edge.formats import quant
from qwen_edge.formats.model_file import ModelFile

# q4ag32 and q4k keep their block minimum as a float zero point -m/d: one f32 rounding.
ROUNDED_FORMATS = ("q4ag32", "q4k")


@pytest.mark.parametrize("recipe", ["q4s", "q8", "q4", "q4m", "f16"])
def test_weights_are_the_model_files(recipe: str, tiny_model_file: Callable[[str], Path]) -> None:
    with ModelFile(tiny_model_file(recipe)) as mf:
        for name, e in mf.tensors.items():
            if len(e.shape) != 2:
                continue
            m = onnx_weights.onnx_matrix(e.format, mf.raw(name), (e.shape[0], e.shape[1]))
            got, want = onnx_weights.dequantize_onnx(m), quant.dequantize(e.format, mf.raw(name),
                                                                         e.shape)  # fmt: skip
            if e.format in ROUNDED_FORMATS:
                np.testing.assert_allclose(got, want, rtol=0, atol=4e-7 * np.abs(want).max())
            else:
                np.testing.assert_array_equal(got, want, err_msg=f"{name} ({e.format})")
            if e.format in ("q4g32", "q8g32", "q6k"):  # MatMulNBits' default zero point
                assert m.zero_points is None, name


def test_odd_row_counts_and_zero_blocks() -> None:
    rng = np.random.default_rng(3)
    for fmt in quant.PACKED_FORMATS:
        w = rng.standard_normal((13, 96)).astype(np.float32)
        w[5] = 0.0  # an all-zero row: scale 0, no division by it
        data = quant.quantize(fmt, w)
        m = onnx_weights.onnx_matrix(fmt, data, (13, 96))
        assert m.packed is not None and m.packed.shape == (13, 3, 32 * m.bits // 8)
        want = quant.dequantize(fmt, data, (13, 96))
        got = onnx_weights.dequantize_onnx(m)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=0, atol=4e-7 * np.abs(want).max() + 1e-30)
