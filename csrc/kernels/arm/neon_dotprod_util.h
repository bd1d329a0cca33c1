// SPDX-License-Identifier: Apache-2.0
// sdot building blocks shared by the neon_dotprod and neon_i8mm kernel files (both compiled with
// +dotprod; never include this from a baseline file). Internal linkage only, like neon_util.h.
//
// One quant record step is 4 columns x 8 rows = two 16-byte vectors (rows 0-3, rows 4-7), and
// one lane-indexed sdot multiplies a vector by the step's 4 activation bytes picked from a
// register (lane s % 4 of x[0..15] or x[16..31]): 16 sdot per block and row group, nothing
// broadcast through memory. Two accumulator chains per half (even/odd steps) halve the sdot
// dependency chain; integer sums are exact in any order.
#pragma once

#include <arm_neon.h>

#include "kernels/arm/neon_util.h"

namespace qe {
namespace {

// One block of weights as signed bytes: w[s][h] = step s (columns 4s..4s+3), rows 4h..4h+3.
template <WeightFormat F>
static inline void sdot_load_block(const uint8_t* rec, int8x16_t (&w)[8][2]) {
    if constexpr (F == WeightFormat::kQ8g32) {
        const uint8x16_t flip = vdupq_n_u8(0x80);  // offset binary u8 = q + 128 -> int8 q
        for (int s = 0; s < 8; ++s) {
            for (int h = 0; h < 2; ++h)
                w[s][h] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(rec + 32 * s + 16 * h), flip));
        }
    } else {
        const uint8x16_t low = vdupq_n_u8(0x0f);
        for (int c = 0; c < 4; ++c) {
            for (int h = 0; h < 2; ++h) {
                const uint8x16_t raw = vld1q_u8(rec + 32 * c + 16 * h);
                w[2 * c][h] = vreinterpretq_s8_u8(vandq_u8(raw, low));
                w[2 * c + 1][h] = vreinterpretq_s8_u8(vshrq_n_u8(raw, 4));
            }
        }
    }
}

// acc += w (4 rows x 4 bytes) . x[4S..4S+3], x given as its two halves.
template <int S>
static inline int32x4_t sdot_step(int32x4_t acc, int8x16_t w, int8x16_t x0, int8x16_t x1) {
    if constexpr (S < 4) {
        return vdotq_laneq_s32(acc, w, x0, S);
    } else {
        return vdotq_laneq_s32(acc, w, x1, S - 4);
    }
}

// Exact int32 dot products of the block's 8 rows with xq[32]: d[h] = rows 4h..4h+3.
static inline void sdot_block(const int8x16_t (&w)[8][2], const int8_t* xq, int32x4_t (&d)[2]) {
    const int8x16_t x0 = vld1q_s8(xq), x1 = vld1q_s8(xq + 16);
    for (int h = 0; h < 2; ++h) {
        const int32x4_t z = vdupq_n_s32(0);
        int32x4_t a = sdot_step<0>(z, w[0][h], x0, x1);
        int32x4_t c = sdot_step<1>(z, w[1][h], x0, x1);
        a = sdot_step<2>(a, w[2][h], x0, x1);
        c = sdot_step<3>(c, w[3][h], x0, x1);
        a = sdot_step<4>(a, w[4][h], x0, x1);
        c = sdot_step<5>(c, w[5][h], x0, x1);
        a = sdot_step<6>(a, w[6][h], x0, x1);
        c = sdot_step<7>(c, w[7][h], x0, x1);
        d[h] = vaddq_s32(a, c);
    }
}

// Rows of group g times NT token rows x[t] (each w.blocks blocks), accumulated in acc[t]: the
// block's weights are unpacked once and reused for every token of the tile.
template <WeightFormat F, int NT>
static inline void sdot_group_tile(const PackedMatrix& w, int64_t g, const BlockQ8A* const (&x)[NT],
                                   GroupAcc (&acc)[NT]) {
    const int64_t qbytes = quant_record_bytes(F), sbytes = scale_record_bytes(F);
    const uint8_t* rec = w.quants + g * w.blocks * qbytes;
    const uint8_t* srec = w.scales + g * w.blocks * sbytes;
    for (int t = 0; t < NT; ++t) group_acc_zero(acc[t]);
    for (int64_t b = 0; b < w.blocks; ++b, rec += qbytes, srec += sbytes) {
        int8x16_t wv[8][2];
        sdot_load_block<F>(rec, wv);
        for (int t = 0; t < NT; ++t) {
            int32x4_t d[2];
            sdot_block(wv, x[t][b].q, d);
            combine_block<F>(acc[t], srec, x[t][b].d, x[t][b].sum, d[0], d[1]);
        }
    }
}

// Y[t, 8g + i] for t < m over the row groups [g_begin, g_end) (see gemm_loop for the order).
template <WeightFormat F>
static inline void sdot_gemm(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y,
                             int64_t ldy, int64_t g_begin, int64_t g_end) {
    gemm_loop(w, m, g_begin, g_end, [&](auto nt, int64_t t, int64_t g) {
        constexpr int NT = decltype(nt)::value;
        const BlockQ8A* xt[NT];
        for (int i = 0; i < NT; ++i) xt[i] = x + (t + i) * w.blocks;
        GroupAcc acc[NT];
        sdot_group_tile<F, NT>(w, g, xt, acc);
        for (int i = 0; i < NT; ++i) finish_group<F>(w, g, acc[i], y + (t + i) * ldy);
    });
}

}  // namespace
}  // namespace qe
