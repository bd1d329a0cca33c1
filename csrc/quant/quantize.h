// SPDX-License-Identifier: Apache-2.0
// The export quantizers of the packed weight formats: float32 rows -> packed bytes, byte for byte
// what qwen_edge/formats/quant.py's `quantize` writes (its numba/numpy searches are the
// reference; tests/formats/test_quantize.py and tests/csrc/test_quantize.cc compare them). The
// code is quantize_inl.h; this header is its interface.
//
// Every quantizer is local to a row: a row's block scales, row factors (q4k, q6k) and codes
// depend on that row only. So a matrix can be quantized in chunks of rows, and a chunk's row
// groups on as many threads as the caller likes, each writing only its own records.
#pragma once

#include <cstdint>

#include "quant/formats.h"

namespace qe {

// Quantizes the rows [row0, row0 + n_rows) of a packed [layout.rows, layout.k] matrix, given as
// float32 x [n_rows, layout.k] (contiguous), into `out` (the whole tensor, layout.total_bytes,
// zero-filled by the caller so padding rows stay zero). Only the row groups
// [g_begin, g_end) (absolute, within the chunk's rows) are written, so threads may split a
// chunk by row group. row0 must be a multiple of kRowPack.
// Returns false, writing nothing of the offending group, if a value of those rows is NaN or
// infinite (or for a bad format, row0 or isa).
// `isa`: "" for the best this CPU runs, or one of quantizer_isas(): "base" (the build's baseline
// ISA, two float64 lanes) or, on x86-64 CPUs with AVX2, "avx2" (four lanes). Same bytes.
// `importance`: nullptr, or layout.k positive weights, one per input column (the mean squared
// activation of that channel on calibration text): the 4- and 6-bit scale searches then
// minimise the error weighted by them (q8g32 ignores them). The caller checks them.
bool quantize_row_groups(WeightFormat f, const PackedLayout& layout, const float* x,
                         int64_t row0, int64_t n_rows, int64_t g_begin, int64_t g_end,
                         uint8_t* out, const char* isa = "", const float* importance = nullptr);

// The quantizer variants this build has and this CPU runs, best first.
const char* const* quantizer_isas(int* count);

// IEEE half from float, rounding to nearest even (subnormals, overflow to infinity, NaN kept).
uint16_t f32_to_f16(float f);

}  // namespace qe
