// SPDX-License-Identifier: Apache-2.0
// ARMv8.2 DotProd quantized products (Cortex-A76 / Raspberry Pi 5, Cortex-A78AE / Jetson Orin,
// Cortex-A55): 16 lane-indexed sdot per block and row group, the 4-bit codes unpacked with one
// and + one ushr per 32 bytes, the int8 codes flipped from offset binary with one eor per 16
// bytes. Compiled with +dotprod (per file). Outputs equal ref bit for bit (see neon_inl.h).
// Quantization and dequantization are not on the hot path of sdot: this table uses neon's.
//
// One quant record step is 4 columns x 8 rows = two 16-byte vectors (rows 0-3, rows 4-7), and
// one lane-indexed sdot multiplies a vector by the step's 4 activation bytes picked from a
// register (lane s % 4 of x[0..15] or x[16..31]): 16 sdot per block, row group and token,
// nothing broadcast through memory. gemm reuses each block's unpacked weights for a tile of 4
// tokens.
#include <arm_neon.h>

#include <utility>

#include "kernels/arm/neon_inl.h"

namespace qe::neon_dotprod {
namespace {

// Step S for NT tokens: acc[t][h] (rows 4h..4h+3 of token t) += step weights . x_t[4S..4S+3].
template <WeightFormat F, int NT, int S>
QE_NEON_INLINE void sdot_tile_step(const uint8_t* rec, const int8x16_t (&xv)[NT][2],
                                   int32x4_t (&acc)[NT][2]) {
    int8x16_t ws[2];
    step_weights<F>(rec, S, ws);
    for (int t = 0; t < NT; ++t) {
        for (int h = 0; h < 2; ++h) {
            const int32x4_t a = S == 0 ? vdupq_n_s32(0) : acc[t][h];
            acc[t][h] = vdotq_laneq_s32(a, ws[h], xv[t][S / 4], S % 4);
        }
    }
}

// Exact int32 dot products of one block's 8 rows with NT tokens: d[t][h] = rows 4h..4h+3.
// Step-major: each step's two weight vectors meet every token while live, so a 4-token tile
// needs 2 + 6 * 4 vector registers (x, int and float accumulators per token) and never spills.
// One sdot chain per (token, half): 2 * NT independent chains hide the sdot latency.
template <WeightFormat F, int NT, int... S>
QE_NEON_INLINE void sdot_block_tile(const uint8_t* rec, const BlockQ8A* const* x, int64_t b,
                                    int32x4_t (&d)[NT][2], std::integer_sequence<int, S...>) {
    int8x16_t xv[NT][2];
    for (int t = 0; t < NT; ++t) {
        xv[t][0] = vld1q_s8(x[t][b].q);
        xv[t][1] = vld1q_s8(x[t][b].q + 16);
    }
    (sdot_tile_step<F, NT, S>(rec, xv, d), ...);
}

// Rows of group g times NT token rows x[t] (each w.blocks blocks), accumulated in acc[t].
template <WeightFormat F, int NT>
QE_NEON_INLINE void sdot_group_tile(const PackedMatrix& w, int64_t g,
                                    const BlockQ8A* const (&x)[NT], GroupAcc (&acc)[NT]) {
    const int64_t qbytes = quant_record_bytes(F), sbytes = scale_record_bytes(F);
    const uint8_t* rec = w.quants + g * w.blocks * qbytes;
    const uint8_t* srec = w.scales + g * w.blocks * sbytes;
    for (int t = 0; t < NT; ++t) group_acc_zero(acc[t]);
    for (int64_t b = 0; b < w.blocks; ++b, rec += qbytes, srec += sbytes) {
        int32x4_t d[NT][2];
        sdot_block_tile<F, NT>(rec, x, b, d, std::make_integer_sequence<int, 8>{});
        for (int t = 0; t < NT; ++t)
            combine_block<F>(acc[t], srec, x[t][b].d, x[t][b].sum, d[t][0], d[t][1]);
    }
}

// Y[t, 8g + i] for t < m over the row groups [g_begin, g_end) (see gemm_loop for the order).
template <WeightFormat F>
QE_NEON_INLINE void sdot_gemm(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y,
                              int64_t ldy, int64_t g_begin, int64_t g_end) {
    gemm_loop<F>(w, x, m, y, ldy, g_begin, g_end,
                 [&](auto nt, int64_t g, const auto& xt, auto& acc) QE_LAMBDA_INLINE {
                     sdot_group_tile<F, decltype(nt)::value>(w, g, xt, acc);
                 });
}

}  // namespace

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
