// SPDX-License-Identifier: Apache-2.0
// ARMv8.2 DotProd quantized products (Cortex-A76 / Raspberry Pi 5, Cortex-A78AE / Jetson Orin,
// Cortex-A55): 16 lane-indexed sdot per block and row group, the 4-bit codes unpacked with one
// and + one ushr per 32 bytes, the int8 codes flipped from offset binary with one eor per 16
// bytes. gemm reuses each block's unpacked weights for a tile of 4 tokens
// (kernels/arm/neon_dotprod_inl.h). Outputs equal ref bit for bit (see neon_inl.h).
// Quantization and dequantization are not on the hot path of sdot: this table uses neon's.
#include "kernels/arm/neon_dotprod_inl.h"

namespace qe::neon_dotprod {

void gemv_q8a(const PackedMatrix& w, const BlockQ8A* x, float* y, int64_t g_begin, int64_t g_end) {
    with_format(w.format,
                [&](auto fmt) { sdot_gemm<decltype(fmt)::value>(w, x, 1, y, 0, g_begin, g_end); });
}

void gemm_q8a(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
              int64_t g_begin, int64_t g_end) {
    with_format(w.format, [&](auto fmt) {
        sdot_gemm<decltype(fmt)::value>(w, x, m, y, ldy, g_begin, g_end);
    });
}

}  // namespace qe::neon_dotprod
