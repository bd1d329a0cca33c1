// SPDX-License-Identifier: Apache-2.0
// ARMv8.6 I8MM quantized products (Cortex-A510/A710/X2 and later: current phones under Termux,
// Graviton 3, Neoverse V/N2). Compiled with +dotprod+i8mm; the table requires both.
//
// gemm (prefill): usmmla multiplies a 2x8 block of weights (2 rows x 8 columns, unsigned) by a
// 2x8 block of activations (2 tokens x 8 columns, signed) into a 2x2 int32 tile: 32 MACs per
// instruction against sdot's 16. The packed layout keeps 4 columns per row per step, so one
// 32-bit zip of steps 2j and 2j+1 turns 4 rows x 4 columns (twice) into the two 2x8 operands of
// rows {0,1} and {2,3}; for 4-bit records the two steps are the low and high nibbles of one
// chunk. A tile is 8 rows x 4 tokens (2 token pairs): per block 16 usmmla + 16 zips (weights) +
// 8 paired 8-byte loads (activations) + 8 uzp to get back to rows-in-lanes for the float
// combination, which is then ref's lane-wise arithmetic (bit-exact, neon_inl.h).
// Because usmmla takes unsigned weights, q8g32's offset-binary bytes (and q6k's unsigned 6-bit
// codes) go in as they are and the 128 * sum(x) (32 * sum(x)) bias comes off the int32 result,
// exact.
//
// gemv (decode): a 2x2 tile would waste half of every usmmla on one token, so this table decodes
// with neon_dotprod's sdot kernel. A usdot decode kernel for q8g32 (unsigned weights as stored,
// no eor flip) was measured and dropped: 63.1 against sdot's 62.0 instructions per block
// (tools/arm_insn_count.sh, docs/arm-performance.md).
#include "kernels/arm/neon_inl.h"

namespace qe::neon_i8mm {
namespace {

// The 2x8 weight operands of k-chunk j (columns 8j..8j+7) of one block:
// op[p] = rows {2p, 2p+1}, each row's 8 columns contiguous.
template <WeightFormat F>
QE_NEON_INLINE void mmla_weights(const uint8_t* rec, int j, uint8x16_t (&op)[4]) {
    for (int h = 0; h < 2; ++h) {
        uint32x4_t a, b;  // 4 rows x 4 columns: columns 8j..8j+3 and 8j+4..8j+7
        if constexpr (F == WeightFormat::kQ8g32) {
            a = vreinterpretq_u32_u8(vld1q_u8(rec + 64 * j + 16 * h));
            b = vreinterpretq_u32_u8(vld1q_u8(rec + 64 * j + 32 + 16 * h));
        } else if constexpr (F == WeightFormat::kQ6k) {  // unsigned u6 = q + 32 (bias below)
            a = vreinterpretq_u32_u8(q6_step_codes(rec, 2 * j, h));
            b = vreinterpretq_u32_u8(q6_step_codes(rec, 2 * j + 1, h));
        } else {
            const uint8x16_t raw = vld1q_u8(rec + 32 * j + 16 * h);
            a = vreinterpretq_u32_u8(vandq_u8(raw, vdupq_n_u8(0x0f)));
            b = vreinterpretq_u32_u8(vshrq_n_u8(raw, 4));
        }
        op[2 * h] = vreinterpretq_u8_u32(vzip1q_u32(a, b));
        op[2 * h + 1] = vreinterpretq_u8_u32(vzip2q_u32(a, b));
    }
}

// Rows of group g times NT (1..4) token rows: tokens go in pairs; an odd last token is paired
// with itself and the duplicate result dropped.
template <WeightFormat F, int NT>
QE_NEON_INLINE void mmla_group_tile(const PackedMatrix& w, int64_t g,
                                    const BlockQ8A* const (&x)[NT], GroupAcc (&acc)[NT]) {
    constexpr int NP = (NT + 1) / 2;
    const BlockQ8A* xp[2 * NP];
    for (int i = 0; i < 2 * NP; ++i) xp[i] = x[i < NT ? i : NT - 1];
    const int64_t qbytes = quant_record_bytes(F), sbytes = scale_record_bytes(F);
    const uint8_t* rec = w.quants + g * w.blocks * qbytes;
    const uint8_t* srec = w.scales + g * w.blocks * sbytes;
    for (int t = 0; t < NT; ++t) group_acc_zero(acc[t]);
    for (int64_t b = 0; b < w.blocks; ++b, rec += qbytes, srec += sbytes) {
        int32x4_t c[NP][4];  // [pair][row pair] = {r0 t0, r0 t1, r1 t0, r1 t1}
        for (auto& cp : c) {
            for (auto& v : cp) v = vdupq_n_s32(0);
        }
        for (int j = 0; j < 4; ++j) {
            uint8x16_t op[4];
            mmla_weights<F>(rec, j, op);
            for (int p = 0; p < NP; ++p) {
                const int8x16_t xo = vcombine_s8(vld1_s8(xp[2 * p][b].q + 8 * j),
                                                 vld1_s8(xp[2 * p + 1][b].q + 8 * j));
                for (int rp = 0; rp < 4; ++rp) c[p][rp] = vusmmlaq_s32(c[p][rp], op[rp], xo);
            }
        }
        for (int p = 0; p < NP; ++p) {
            for (int e = 0; e < 2 && 2 * p + e < NT; ++e) {
                const int t = 2 * p + e;
                int32x4_t d0 = e == 0 ? vuzp1q_s32(c[p][0], c[p][1]) : vuzp2q_s32(c[p][0], c[p][1]);
                int32x4_t d1 = e == 0 ? vuzp1q_s32(c[p][2], c[p][3]) : vuzp2q_s32(c[p][2], c[p][3]);
                if constexpr (F == WeightFormat::kQ8g32 || F == WeightFormat::kQ6k) {
                    const int32_t zero = F == WeightFormat::kQ8g32 ? 128 : 32;
                    const int32x4_t bias = vdupq_n_s32(zero * x[t][b].sum);
                    d0 = vsubq_s32(d0, bias);
                    d1 = vsubq_s32(d1, bias);
                }
                combine_block<F>(acc[t], srec, x[t][b].d, x[t][b].sum, d0, d1);
            }
        }
    }
}

template <WeightFormat F>
QE_NEON_INLINE void mmla_gemm(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y,
                              int64_t ldy, int64_t g_begin, int64_t g_end) {
    gemm_loop<F>(w, x, m, y, ldy, g_begin, g_end,
                 [&](auto nt, int64_t g, const auto& xt, auto& acc) QE_LAMBDA_INLINE {
                     mmla_group_tile<F, decltype(nt)::value>(w, g, xt, acc);
                 });
}

}  // namespace

void gemm_q8a(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
              int64_t g_begin, int64_t g_end) {
    with_format(w.format, [&](auto fmt) {
        mmla_gemm<decltype(fmt)::value>(w, x, m, y, ldy, g_begin, g_end);
    });
}

}  // namespace qe::neon_i8mm
