// SPDX-License-Identifier: Apache-2.0
// The export quantizers compiled for AVX2 (four float64 lanes); quantize.cc calls them on CPUs
// that have it. Built on x86-64 only, with -mavx2 (CMakeLists.txt).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "quant/formats.h"
#include "quant/quantize.h"

namespace qe {
namespace avx2 {
namespace {
#define QE_QUANT_LANES 4
#include "quant/quantize_inl.h"
}  // namespace

bool quantize_row_groups(WeightFormat f, const PackedLayout& layout, const float* x,
                         int64_t row0, int64_t n_rows, int64_t g_begin, int64_t g_end,
                         uint8_t* out, const float* importance) {
    return quantize_row_groups_impl(f, layout, x, row0, n_rows, g_begin, g_end, out, importance);
}

}  // namespace avx2
}  // namespace qe
