// SPDX-License-Identifier: Apache-2.0
// Baseline ARMv8.0 NEON quantized kernels (Cortex-A72 / Raspberry Pi 4 and every aarch64 core):
// activation quantization, the W4A8/W8A8 products and row dequantization.
//
// Weights stream in the packed layout of docs/weight-formats.md: a quant record holds 8 steps of
// 4 columns x 8 rows, so one 16-byte load = 4 rows x 4 columns (rows 0-3, then rows 4-7).
// Without sdot the int8 dot is smull/smlal (8x8 -> 16-bit products, accumulated in 16 bits)
// followed by sadalp (pairwise widening add into 32 bits): each step's 4 activation bytes are
// broadcast to all four rows of the vector. 16-bit accumulation is exact because chains are
// short enough: 4-bit codes 0..15 times |x| <= 127 over all 8 steps is at most 15240, int8
// weights (-128..127 after the 0x80 flip) over 2 steps at most 32512 (< 32767). The
// precondition is the quantizer's output range, |x.q| <= 127.
//
// gemm reuses one block's unpacked weights for a tile of up to 4 tokens (weights in registers,
// activations from L1/L2); rows of a group are SIMD lanes so the float combination per block is
// the same lane-wise arithmetic as ref, and every output equals ref bit for bit.
#include <arm_neon.h>

#include <cmath>
#include <cstring>

#include "kernels/arm/neon_util.h"

namespace qe::neon {
namespace {

// One block of weights as signed bytes: w[s][h] = step s (columns 4s..4s+3), rows 4h..4h+3.
template <WeightFormat F>
inline void load_block(const uint8_t* rec, int8x16_t (&w)[8][2]) {
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

// Exact int32 dot products of the block's 8 rows with xq[32]: d[h] = rows 4h..4h+3.
// L = steps accumulated in 16 bits before widening (see the file comment for the bounds).
template <int L>
inline void dot_block(const int8x16_t (&w)[8][2], const int8_t* xq, int32x4_t (&d)[2]) {
    int8x16_t xb[8];  // step s's 4 activation bytes, repeated for the 4 rows of a vector
    for (int s = 0; s < 8; ++s) {
        int32_t v;
        std::memcpy(&v, xq + 4 * s, sizeof v);
        xb[s] = vreinterpretq_s8_s32(vdupq_n_s32(v));
    }
    for (int h = 0; h < 2; ++h) {
        int32x4_t lo = vdupq_n_s32(0), hi = vdupq_n_s32(0);  // rows {0,1} and {2,3} of the half
        for (int s0 = 0; s0 < 8; s0 += L) {
            int16x8_t clo = vmull_s8(vget_low_s8(w[s0][h]), vget_low_s8(xb[s0]));
            int16x8_t chi = vmull_high_s8(w[s0][h], xb[s0]);
            for (int s = s0 + 1; s < s0 + L; ++s) {
                clo = vmlal_s8(clo, vget_low_s8(w[s][h]), vget_low_s8(xb[s]));
                chi = vmlal_high_s8(chi, w[s][h], xb[s]);
            }
            lo = vpadalq_s16(lo, clo);
            hi = vpadalq_s16(hi, chi);
        }
        d[h] = vpaddq_s32(lo, hi);  // [r0, r1, r2, r3] of this half
    }
}

template <WeightFormat F>
constexpr int kChain = F == WeightFormat::kQ8g32 ? 2 : 8;

// Rows of group g times NT token rows x[t] (each w.blocks blocks), accumulated in acc[t].
template <WeightFormat F, int NT>
inline void group_tile(const PackedMatrix& w, int64_t g, const BlockQ8A* const (&x)[NT],
                       GroupAcc (&acc)[NT]) {
    const int64_t qbytes = quant_record_bytes(F), sbytes = scale_record_bytes(F);
    const uint8_t* rec = w.quants + g * w.blocks * qbytes;
    const uint8_t* srec = w.scales + g * w.blocks * sbytes;
    for (int t = 0; t < NT; ++t) group_acc_zero(acc[t]);
    for (int64_t b = 0; b < w.blocks; ++b, rec += qbytes, srec += sbytes) {
        int8x16_t wv[8][2];
        load_block<F>(rec, wv);
        for (int t = 0; t < NT; ++t) {
            int32x4_t d[2];
            dot_block<kChain<F>>(wv, x[t][b].q, d);
            combine_block<F>(acc[t], srec, x[t][b].d, x[t][b].sum, d[0], d[1]);
        }
    }
}

template <WeightFormat F>
inline void gemm(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
                 int64_t g_begin, int64_t g_end) {
    gemm_loop(w, m, g_begin, g_end, [&](auto nt, int64_t t, int64_t g) {
        constexpr int NT = decltype(nt)::value;
        const BlockQ8A* xt[NT];
        for (int i = 0; i < NT; ++i) xt[i] = x + (t + i) * w.blocks;
        GroupAcc acc[NT];
        group_tile<F, NT>(w, g, xt, acc);
        for (int i = 0; i < NT; ++i) finish_group<F>(w, g, acc[i], y + (t + i) * ldy);
    });
}

}  // namespace

void quantize_q8a(const float* x, BlockQ8A* out, int64_t k) {
    for (int64_t b = 0; b < k / kBlockK; ++b) {
        const float* xb = x + b * kBlockK;
        float32x4_t v[8];
        float32x4_t amax = vdupq_n_f32(0.0f);
        for (int i = 0; i < 8; ++i) {
            v[i] = vld1q_f32(xb + 4 * i);
            amax = vmaxnmq_f32(amax, vabsq_f32(v[i]));  // fmaxnm ignores NaN like std::fmax
        }
        const float d = vmaxnmvq_f32(amax) / 127.0f;
        const float inv = d != 0.0f ? 1.0f / d : 0.0f;
        const int32x4_t lo = vdupq_n_s32(-127), hi = vdupq_n_s32(127);
        int32x4_t sum = vdupq_n_s32(0);
        int16x4_t q16[8];
        for (int i = 0; i < 8; ++i) {
            // fcvtas rounds half away from zero, as std::lround; the clamp is ref's.
            const int32x4_t q = vminq_s32(vmaxq_s32(vcvtaq_s32_f32(vmulq_n_f32(v[i], inv)), lo), hi);
            sum = vaddq_s32(sum, q);
            q16[i] = vmovn_s32(q);
        }
        for (int i = 0; i < 4; ++i)
            vst1_s8(out[b].q + 8 * i, vmovn_s16(vcombine_s16(q16[2 * i], q16[2 * i + 1])));
        out[b].d = d;
        out[b].sum = vaddvq_s32(sum);
    }
}

void gemv_q8a(const PackedMatrix& w, const BlockQ8A* x, float* y, int64_t g_begin,
              int64_t g_end) {
    with_format(w.format, [&](auto fmt) { gemm<decltype(fmt)::value>(w, x, 1, y, 0, g_begin, g_end); });
}

void gemm_q8a(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
              int64_t g_begin, int64_t g_end) {
    with_format(w.format, [&](auto fmt) { gemm<decltype(fmt)::value>(w, x, m, y, ldy, g_begin, g_end); });
}

void dequantize_row(const PackedMatrix& w, int64_t r, float* out) {
    const int64_t g = r / kRowPack;
    const int rr = int(r % kRowPack);
    with_format(w.format, [&](auto fmt) {
        constexpr WeightFormat F = decltype(fmt)::value;
        const int64_t qbytes = quant_record_bytes(F), sbytes = scale_record_bytes(F);
        const float* rp = w.row_params ? w.row_params + g * 16 : nullptr;
        for (int64_t b = 0; b < w.blocks; ++b) {
            const uint8_t* rec = w.quants + (g * w.blocks + b) * qbytes;
            const uint8_t* srec = w.scales + (g * w.blocks + b) * sbytes;
            int16x8_t q[4];  // the row's 32 codes, columns in order
            if constexpr (F == WeightFormat::kQ8g32) {
                uint32_t words[8];  // step s = columns 4s..4s+3 of row rr
                for (int s = 0; s < 8; ++s) std::memcpy(&words[s], rec + 32 * s + 4 * rr, 4);
                for (int i = 0; i < 2; ++i) {
                    const int8x16_t v = vreinterpretq_s8_u8(
                        veorq_u8(vreinterpretq_u8_u32(vld1q_u32(words + 4 * i)), vdupq_n_u8(0x80)));
                    q[2 * i] = vmovl_s8(vget_low_s8(v));
                    q[2 * i + 1] = vmovl_high_s8(v);
                }
            } else {
                uint32_t words[4];  // chunk c: low nibbles = step 2c, high nibbles = step 2c+1
                for (int c = 0; c < 4; ++c) std::memcpy(&words[c], rec + 32 * c + 4 * rr, 4);
                const uint8x16_t raw = vreinterpretq_u8_u32(vld1q_u32(words));
                const uint32x4_t lo = vreinterpretq_u32_u8(vandq_u8(raw, vdupq_n_u8(0x0f)));
                const uint32x4_t hi = vreinterpretq_u32_u8(vshrq_n_u8(raw, 4));
                const uint8x16_t c01 = vreinterpretq_u8_u32(vzip1q_u32(lo, hi));  // columns 0-15
                const uint8x16_t c23 = vreinterpretq_u8_u32(vzip2q_u32(lo, hi));  // 16-31
                q[0] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(c01)));
                q[1] = vreinterpretq_s16_u16(vmovl_high_u8(c01));
                q[2] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(c23)));
                q[3] = vreinterpretq_s16_u16(vmovl_high_u8(c23));
                if constexpr (F == WeightFormat::kQ4g32) {
                    for (auto& v : q) v = vsubq_s16(v, vdupq_n_s16(8));
                }
            }
            // Scalar factors of this row and block, then the documented float32 formula.
            float scale, offset = 0.0f;
            if constexpr (F == WeightFormat::kQ4k) {
                scale = rp[rr] * float(srec[rr]);
                offset = rp[8 + rr] * float(srec[8 + rr]);
            } else {
                uint16_t h;
                std::memcpy(&h, srec + 2 * rr, 2);
                scale = f16_to_f32(h);
                if constexpr (F == WeightFormat::kQ4ag32) {
                    std::memcpy(&h, srec + 16 + 2 * rr, 2);
                    offset = f16_to_f32(h);
                }
            }
            float* o = out + b * kBlockK;
            for (int i = 0; i < 4; ++i) {
                const float32x4_t f[2] = {vcvtq_f32_s32(vmovl_s16(vget_low_s16(q[i]))),
                                          vcvtq_f32_s32(vmovl_high_s16(q[i]))};
                for (int j = 0; j < 2; ++j) {
                    float32x4_t v = vmulq_n_f32(f[j], scale);
                    if constexpr (F == WeightFormat::kQ4ag32) v = vaddq_f32(v, vdupq_n_f32(offset));
                    if constexpr (F == WeightFormat::kQ4k) v = vsubq_f32(v, vdupq_n_f32(offset));
                    vst1q_f32(o + 8 * i + 4 * j, v);
                }
            }
        }
    });
}

}  // namespace qe::neon
