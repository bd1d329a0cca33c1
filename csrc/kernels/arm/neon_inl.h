// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the aarch64 kernel files: loading scale records, the per-block float
// combination of every packed format, and storing a row group. Baseline ARMv8.0 intrinsics only.
//
// Everything here is `QE_NEON_INLINE` or in an anonymous namespace (internal linkage): each kernel
// file gets its own copy compiled with its own -march, so a copy built with +dotprod can never be
// the one the linker hands to a baseline caller (that would be SIGILL on a Cortex-A72).
//
// The float combination reproduces `ref` (kernels/ref/matmul_ref.cc) operation for operation:
// each lane is one row; per term the factor scale * activation scale is rounded (vmulq), then
// one fused multiply-add (vfmaq) adds the term, in ref's order (the build passes
// -ffp-contract=off, so no other product is fused), and every table returns ref's bits.
#pragma once

#include <arm_neon.h>

#include <cstring>
#include <type_traits>

#include "kernels/format_dispatch.h"
#include "kernels/kernels.h"

// Forced inlining for the per-block helpers: they pass int32x4_t arrays by reference, which
// spill to the stack whenever GCC decides to outline one (measured: +25% instructions).
#define QE_NEON_INLINE static inline __attribute__((always_inline))
// The same for the lambdas of the gemm loop nest: outlined, the tile's accumulators cross a
// call (measured under qemu: +3 to +5% instructions per gemv).
#define QE_LAMBDA_INLINE __attribute__((always_inline))

namespace qe {
namespace {

// 8 IEEE halves -> two float32x4 (rows 0-3, rows 4-7). fcvtl is ARMv8.0 (exact widening);
// no fp16 arithmetic is used anywhere.
QE_NEON_INLINE float32x4x2_t load_f16x8(const uint8_t* p) {
    uint16x8_t h;
    std::memcpy(&h, p, sizeof h);
    const float16x8_t f = vreinterpretq_f16_u16(h);
    return {{vcvt_f32_f16(vget_low_f16(f)), vcvt_high_f32_f16(f)}};
}

// 8 bytes -> two float32x4 of their unsigned values (q4k sub-scales and minimums).
QE_NEON_INLINE float32x4x2_t load_u8x8_f32(const uint8_t* p) {
    const uint16x8_t w = vmovl_u8(vld1_u8(p));
    return {{vcvtq_f32_u32(vmovl_u16(vget_low_u16(w))), vcvtq_f32_u32(vmovl_high_u16(w))}};
}

// 8 bytes -> two float32x4 of their signed values (q6k sub-scales).
QE_NEON_INLINE float32x4x2_t load_s8x8_f32(const uint8_t* p) {
    const int16x8_t w = vmovl_s8(vreinterpret_s8_u8(vld1_u8(p)));
    return {{vcvtq_f32_s32(vmovl_s16(vget_low_s16(w))), vcvtq_f32_s32(vmovl_high_s16(w))}};
}

// q6k: the unsigned 6-bit codes (0..63) of step s (columns 4s..4s+3) of rows 4h..4h+3: the low
// nibble from the 4-bit part of the record, bits 4-5 from bits 2t..2t+1 (t = s % 4) of the
// high part, moved into place by one variable shift (left by 4 - 2t, negative = right).
QE_NEON_INLINE uint8x16_t q6_step_codes(const uint8_t* rec, int s, int h) {
    const uint8x16_t raw = vld1q_u8(rec + 32 * (s / 2) + 16 * h);
    const uint8x16_t lo = s % 2 == 0 ? vandq_u8(raw, vdupq_n_u8(0x0f)) : vshrq_n_u8(raw, 4);
    const uint8x16_t hraw = vld1q_u8(rec + kQ6HighOffset + 32 * (s / 4) + 16 * h);
    const uint8x16_t hi =
        vandq_u8(vshlq_u8(hraw, vdupq_n_s8(int8_t(4 - 2 * (s % 4)))), vdupq_n_u8(0x30));
    return vorrq_u8(lo, hi);
}

// Weights of step s (columns 4s..4s+3) as signed bytes, ws[h] = rows 4h..4h+3: the operand of
// the baseline smull/smlal products (matmul_neon.cc) and of sdot (matmul_neon_dotprod.cc).
template <WeightFormat F>
QE_NEON_INLINE void step_weights(const uint8_t* rec, int s, int8x16_t (&ws)[2]) {
    for (int h = 0; h < 2; ++h) {
        if constexpr (F == WeightFormat::kQ8g32) {  // offset binary u8 = q + 128 -> int8 q
            ws[h] =
                vreinterpretq_s8_u8(veorq_u8(vld1q_u8(rec + 32 * s + 16 * h), vdupq_n_u8(0x80)));
        } else if constexpr (F == WeightFormat::kQ6k) {  // u6 = q + 32 -> int8 q in -32..31
            ws[h] = vsubq_s8(vreinterpretq_s8_u8(q6_step_codes(rec, s, h)), vdupq_n_s8(32));
        } else {  // chunk s/2: low nibbles = even step, high nibbles = odd step
            const uint8x16_t raw = vld1q_u8(rec + 32 * (s / 2) + 16 * h);
            ws[h] = vreinterpretq_s8_u8(s % 2 == 0 ? vandq_u8(raw, vdupq_n_u8(0x0f))
                                                   : vshrq_n_u8(raw, 4));
        }
    }
}

// Float accumulators of one row group (8 rows in two vectors): acc for every format, accm for
// the q4k minimum term that ref keeps apart until the row factors are applied.
struct GroupAcc {
    float32x4_t acc[2];
    float32x4_t accm[2];
};

QE_NEON_INLINE void group_acc_zero(GroupAcc& a) {
    a.acc[0] = a.acc[1] = a.accm[0] = a.accm[1] = vdupq_n_f32(0.0f);
}

// Adds one block: dot[h] = exact integer dot products sum_j code[r, j] * xq[j] of rows 4h..4h+3
// (codes as stored: q - 0 for q8g32 after the 0x80 flip, 0..15 for the 4-bit formats, the signed
// level u6 - 32 for q6k).
// srec = the block's scale record. Mirrors ref's row_dot lane by lane.
template <WeightFormat F>
QE_NEON_INLINE void combine_block(GroupAcc& a, const uint8_t* srec, float xd, int32_t xsum,
                                  int32x4_t dot0, int32x4_t dot1) {
    const int32x4_t dot[2] = {dot0, dot1};
    if constexpr (F == WeightFormat::kQ8g32 || F == WeightFormat::kQ4g32) {
        const float32x4x2_t s = load_f16x8(srec);
        const int32x4_t zero = vdupq_n_s32(F == WeightFormat::kQ4g32 ? 8 * xsum : 0);
        for (int h = 0; h < 2; ++h) {
            const float32x4_t sd = vmulq_n_f32(s.val[h], xd);
            a.acc[h] = vfmaq_f32(a.acc[h], sd, vcvtq_f32_s32(vsubq_s32(dot[h], zero)));
        }
    } else if constexpr (F == WeightFormat::kQ6k) {  // integer sub-scale, row factor at the end
        const float32x4x2_t sc = load_s8x8_f32(srec);
        for (int h = 0; h < 2; ++h) {
            a.acc[h] = vfmaq_f32(a.acc[h], vmulq_n_f32(sc.val[h], xd), vcvtq_f32_s32(dot[h]));
        }
    } else if constexpr (F == WeightFormat::kQ4ag32) {
        const float32x4x2_t s = load_f16x8(srec), m = load_f16x8(srec + 16);
        const float xs = xd * float(xsum);  // the block's scaled sum, rounded as ref
        for (int h = 0; h < 2; ++h) {
            a.acc[h] = vfmaq_f32(a.acc[h], vmulq_n_f32(s.val[h], xd), vcvtq_f32_s32(dot[h]));
            a.acc[h] = vfmaq_n_f32(a.acc[h], m.val[h], xs);
        }
    } else {  // q4k: integer sub-scales now, per-row factors in finish_group
        const float32x4x2_t sc = load_u8x8_f32(srec), mn = load_u8x8_f32(srec + 8);
        const float xs = xd * float(xsum);
        for (int h = 0; h < 2; ++h) {
            a.acc[h] = vfmaq_f32(a.acc[h], vmulq_n_f32(sc.val[h], xd), vcvtq_f32_s32(dot[h]));
            a.accm[h] = vfmaq_n_f32(a.accm[h], mn.val[h], xs);
        }
    }
}

// Writes the rows of group g that exist (r < w.rows) to y[8g + i]; padding rows are not
// written (kernels.h: y may be a row of exactly w.rows outputs).
template <WeightFormat F>
QE_NEON_INLINE void finish_group(const PackedMatrix& w, int64_t g, const GroupAcc& a, float* y) {
    float32x4_t out[2] = {a.acc[0], a.acc[1]};
    if constexpr (F == WeightFormat::kQ4k) {
        const float* rp = w.row_params + g * 16;  // d[8], m[8]
        for (int h = 0; h < 2; ++h) {
            out[h] = vsubq_f32(vmulq_f32(vld1q_f32(rp + 4 * h), a.acc[h]),
                               vmulq_f32(vld1q_f32(rp + 8 + 4 * h), a.accm[h]));
        }
    } else if constexpr (F == WeightFormat::kQ6k) {
        const float* rp = w.row_params + g * 8;  // d[8]
        for (int h = 0; h < 2; ++h) out[h] = vmulq_f32(vld1q_f32(rp + 4 * h), a.acc[h]);
    }
    float* yg = y + g * kRowPack;
    const int64_t valid = w.rows - g * kRowPack;
    if (valid >= kRowPack) {
        vst1q_f32(yg, out[0]);
        vst1q_f32(yg + 4, out[1]);
    } else {
        float tmp[kRowPack];
        vst1q_f32(tmp, out[0]);
        vst1q_f32(tmp + 4, out[1]);
        for (int i = 0; i < valid; ++i) yg[i] = tmp[i];
    }
}

// exp(x) for float lanes, about 2 ulp on [-87, 88]: x = n ln2 + r with |r| <= ln2/2
// (Cody-Waite split of ln2), a degree-6 polynomial for e^r, 2^n built in the exponent field
// (as two factors so n = 128 does not overflow before the product). Saturates to +inf above
// 88.72 and to 0 below -87.34; NaN stays NaN. The same constants as the x86 kernels.
QE_NEON_INLINE float32x4_t exp_f32x4(float32x4_t x) {
    const float32x4_t hi = vdupq_n_f32(88.7228391f), lo = vdupq_n_f32(-87.3365448f);
    const uint32x4_t big = vcgtq_f32(x, hi), tiny = vcltq_f32(x, lo);
    const float32x4_t xc = vminq_f32(vmaxq_f32(x, lo), hi);
    const float32x4_t n = vrndnq_f32(vmulq_n_f32(xc, 1.44269504f));
    float32x4_t r = vfmsq_f32(xc, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vfmaq_f32(r, p, vmulq_f32(r, r));
    p = vaddq_f32(p, vdupq_n_f32(1.0f));
    const int32x4_t ni = vcvtnq_s32_f32(n);
    const int32x4_t n1 = vshrq_n_s32(ni, 1), n2 = vsubq_s32(ni, n1);
    const float32x4_t s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n1, vdupq_n_s32(127)), 23));
    const float32x4_t s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n2, vdupq_n_s32(127)), 23));
    float32x4_t y = vmulq_f32(vmulq_f32(p, s1), s2);
    y = vbslq_f32(big, vdupq_n_f32(__builtin_inff()), y);
    y = vbslq_f32(tiny, vdupq_n_f32(0.0f), y);
    return vbslq_f32(vceqq_f32(x, x), y, x);  // NaN in, NaN out
}

// 1 / (1 + exp(-x)) with a true division: saturates cleanly to 0 and 1.
QE_NEON_INLINE float32x4_t sigmoid_f32x4(float32x4_t x) {
    const float32x4_t one = vdupq_n_f32(1.0f);
    return vdivq_f32(one, vaddq_f32(one, exp_f32x4(vnegq_f32(x))));
}

// Scalar exp with the same polynomial, for the tails of vector loops (lane 0 of the vector op).
QE_NEON_INLINE float exp_f32(float x) {
    return vgetq_lane_f32(exp_f32x4(vdupq_n_f32(x)), 0);
}

// x[i] = exp(x[i] - m) over n floats, returning their sum: the shared step of softmax and of
// attention's online softmax over a tile.
QE_NEON_INLINE float exp_sub_sum(float* x, int64_t n, float m) {
    const float32x4_t mv = vdupq_n_f32(m);
    float32x4_t sv = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t e = exp_f32x4(vsubq_f32(vld1q_f32(x + i), mv));
        vst1q_f32(x + i, e);
        sv = vaddq_f32(sv, e);
    }
    float sum = vaddvq_f32(sv);
    for (; i < n; ++i) {
        x[i] = exp_f32(x[i] - m);
        sum += x[i];
    }
    return sum;
}
QE_NEON_INLINE float sigmoid_f32(float x) {
    return vgetq_lane_f32(sigmoid_f32x4(vdupq_n_f32(x)), 0);
}

// The loop nest of every gemm: row groups in chunks whose weights fit in L1 (~16 KB), and
// within a chunk, tiles of up to 4 tokens, each tile run over the chunk's groups. A tile's
// activations (4 x K x 1.25 bytes) stay in L1 across the chunk, the chunk's weights across all
// tiles, so neither streams from DRAM more than once per chunk. group_tile(NT, g, x, acc)
// accumulates group g's rows times the NT token rows x[i] into acc[i] (NT a
// std::integral_constant<int, 1..4>); the loop turns each accumulator into Y[t + i, 8g..8g+8).
template <WeightFormat F, typename GroupTile>
QE_NEON_INLINE void gemm_loop(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y,
                              int64_t ldy, int64_t g_begin, int64_t g_end, GroupTile&& group_tile) {
    auto tile = [&](auto nt, int64_t t, int64_t g) QE_LAMBDA_INLINE {
        constexpr int NT = decltype(nt)::value;
        const BlockQ8A* xt[NT];
        for (int i = 0; i < NT; ++i) xt[i] = x + (t + i) * w.blocks;
        GroupAcc acc[NT];
        group_tile(nt, g, xt, acc);
        for (int i = 0; i < NT; ++i) finish_group<F>(w, g, acc[i], y + (t + i) * ldy);
    };
    const int64_t group_bytes =
        w.blocks * (quant_record_bytes(w.format) + scale_record_bytes(w.format));
    const int64_t chunk = group_bytes >= 16384 ? 1 : 16384 / group_bytes;
    for (int64_t gc = g_begin; gc < g_end; gc += chunk) {
        const int64_t ge = gc + chunk < g_end ? gc + chunk : g_end;
        int64_t t = 0;
        for (; t + 4 <= m; t += 4) {
            for (int64_t g = gc; g < ge; ++g) tile(std::integral_constant<int, 4>{}, t, g);
        }
        for (int64_t g = gc; g < ge; ++g) {
            switch (m - t) {
                case 3:
                    tile(std::integral_constant<int, 3>{}, t, g);
                    break;
                case 2:
                    tile(std::integral_constant<int, 2>{}, t, g);
                    break;
                case 1:
                    tile(std::integral_constant<int, 1>{}, t, g);
                    break;
                default:
                    break;
            }
        }
    }
}

}  // namespace
}  // namespace qe
