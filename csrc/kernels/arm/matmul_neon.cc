// SPDX-License-Identifier: Apache-2.0
// Baseline ARMv8.0 NEON matrix products (Cortex-A72 / Raspberry Pi 4 and every aarch64 core):
// activation quantization, the W4A8/W8A8 products, row dequantization and the float-weight
// products.
//
// Weights stream in the packed layout of docs/weight-formats.md: a quant record holds 8 steps of
// 4 columns x 8 rows, so one 16-byte load = 4 rows x 4 columns (rows 0-3, then rows 4-7).
// Without sdot the int8 dot is smull/smlal (8x8 -> 16-bit products, accumulated in 16 bits)
// followed by sadalp (pairwise widening add into 32 bits): each step's 4 activation bytes are
// broadcast to all four rows of the vector. 16-bit accumulation is exact because chains are
// short enough: 4-bit codes 0..15 times |x| <= 127 over all 8 steps is at most 15240, int8
// weights (-128..127 after the 0x80 flip) over 2 steps at most 32512 (< 32767), q6k levels
// (-32..31) over all 8 steps at most 32512. The
// precondition is the quantizer's output range, |x.q| <= 127.
//
// The integer part runs step-major over a tile of tokens: each step's two weight vectors meet
// every token of the tile while live, one broadcast activation vector at a time, so the 16-bit
// chains of 4 tokens fit the 32 vector registers (q8g32 and q4k go 2 tokens at a time: more
// chains or accumulators). Rows of a group are SIMD lanes, so the float combination per block
// is ref's lane-wise arithmetic and every output equals ref bit for bit (neon_inl.h).
// Measured under qemu (tools/arm_insn_count.sh): q4g32 gemm 80.5 instructions per 256 MACs
// against 92.5 for one gemv per token.
#include <arm_neon.h>

#include <cmath>
#include <cstring>
#include <utility>

#include "kernels/arm/neon_inl.h"

namespace qe::neon {
namespace {

template <WeightFormat F>
constexpr int kChain = F == WeightFormat::kQ8g32 ? 2 : 8;  // q6k: 8 (see the file comment)

// Step S of a block for NT tokens: the step's two weight vectors times each token's 4
// activation bytes (lane S % 4 of its x vectors, broadcast by dup), into 16-bit chains that are
// widened into c32 every L steps (see the file comment for the bounds).
template <WeightFormat F, int NT, int S>
QE_NEON_INLINE void tile_step(const uint8_t* rec, const int32x4_t (&xv)[NT][2],
                              int16x8_t (&c16)[NT][2][2], int32x4_t (&c32)[NT][2][2]) {
    constexpr int L = kChain<F>;
    int8x16_t ws[2];
    step_weights<F>(rec, S, ws);
    for (int t = 0; t < NT; ++t) {
        const int8x16_t xb = vreinterpretq_s8_s32(vdupq_laneq_s32(xv[t][S / 4], S % 4));
        for (int h = 0; h < 2; ++h) {
            if constexpr (S % L == 0) {
                c16[t][h][0] = vmull_s8(vget_low_s8(ws[h]), vget_low_s8(xb));
                c16[t][h][1] = vmull_high_s8(ws[h], xb);
            } else {
                c16[t][h][0] = vmlal_s8(c16[t][h][0], vget_low_s8(ws[h]), vget_low_s8(xb));
                c16[t][h][1] = vmlal_high_s8(c16[t][h][1], ws[h], xb);
            }
            if constexpr (S % L == L - 1) {
                for (int i = 0; i < 2; ++i) {
                    c32[t][h][i] = S == L - 1 ? vpaddlq_s16(c16[t][h][i])
                                              : vpadalq_s16(c32[t][h][i], c16[t][h][i]);
                }
            }
        }
    }
}

// Exact int32 dot products of block b's 8 rows with NT tokens: d[t][h] = rows 4h..4h+3.
// Step-major, so each step's weights meet every token while live and one broadcast activation
// vector is live at a time.
template <WeightFormat F, int NT, int... S>
QE_NEON_INLINE void dot_block_tile(const uint8_t* rec, const BlockQ8A* const* x, int64_t b,
                                   int32x4_t (&d)[NT][2], std::integer_sequence<int, S...>) {
    int32x4_t xv[NT][2];
    for (int t = 0; t < NT; ++t) {
        xv[t][0] = vreinterpretq_s32_s8(vld1q_s8(x[t][b].q));
        xv[t][1] = vreinterpretq_s32_s8(vld1q_s8(x[t][b].q + 16));
    }
    int16x8_t c16[NT][2][2] = {};  // [token][half][rows {0,1} | rows {2,3}]
    int32x4_t c32[NT][2][2] = {};
    (tile_step<F, NT, S>(rec, xv, c16, c32), ...);
    for (int t = 0; t < NT; ++t) {
        for (int h = 0; h < 2; ++h) d[t][h] = vpaddq_s32(c32[t][h][0], c32[t][h][1]);
    }
}

template <WeightFormat F, int NT>
QE_NEON_INLINE void dot_block_tile(const uint8_t* rec, const BlockQ8A* const* x, int64_t b,
                                   int32x4_t (&d)[NT][2]) {
    dot_block_tile<F, NT>(rec, x, b, d, std::make_integer_sequence<int, 8>{});
}

// Rows of group g times NT token rows x[t] (each w.blocks blocks), accumulated in acc[t].
// kSub tokens go through the integer part together: 4 for the 4-bit formats, 2 for q8g32
// (twice the 16-bit chains) and q4k (twice the float accumulators), which spill at 4.
template <WeightFormat F, int NT>
QE_NEON_INLINE void group_tile(const PackedMatrix& w, int64_t g, const BlockQ8A* const (&x)[NT],
                               GroupAcc (&acc)[NT]) {
    constexpr int kSub = (F == WeightFormat::kQ8g32 || F == WeightFormat::kQ4k) && NT > 2 ? 2 : NT;
    const int64_t qbytes = quant_record_bytes(F), sbytes = scale_record_bytes(F);
    const uint8_t* rec = w.quants + g * w.blocks * qbytes;
    const uint8_t* srec = w.scales + g * w.blocks * sbytes;
    for (int t = 0; t < NT; ++t) group_acc_zero(acc[t]);
    for (int64_t b = 0; b < w.blocks; ++b, rec += qbytes, srec += sbytes) {
        for (int t0 = 0; t0 < NT; t0 += kSub) {
            constexpr int kLast = NT % kSub == 0 ? kSub : NT % kSub;
            if (t0 + kSub <= NT) {
                int32x4_t d[kSub][2];
                dot_block_tile<F, kSub>(rec, x + t0, b, d);
                for (int t = 0; t < kSub; ++t) {
                    const BlockQ8A& xb = x[t0 + t][b];
                    combine_block<F>(acc[t0 + t], srec, xb.d, xb.sum, d[t][0], d[t][1]);
                }
            } else {
                int32x4_t d[kLast][2];
                dot_block_tile<F, kLast>(rec, x + t0, b, d);
                for (int t = 0; t < kLast; ++t) {
                    const BlockQ8A& xb = x[t0 + t][b];
                    combine_block<F>(acc[t0 + t], srec, xb.d, xb.sum, d[t][0], d[t][1]);
                }
            }
        }
    }
}

template <WeightFormat F>
QE_NEON_INLINE void gemm(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
                         int64_t g_begin, int64_t g_end) {
    gemm_loop<F>(w, x, m, y, ldy, g_begin, g_end,
                 [&](auto nt, int64_t g, const auto& xt, auto& acc) QE_LAMBDA_INLINE {
                     group_tile<F, decltype(nt)::value>(w, g, xt, acc);
                 });
}

// Float weights widened exactly: f32 as is, IEEE half by fcvtl, bfloat16 by a 16-bit shift.
struct F32W {
    using T = float;
    static float32x4_t load4(const float* p) { return vld1q_f32(p); }
    static float widen(float v) { return v; }
};
struct F16W {
    using T = uint16_t;
    static float32x4_t load4(const uint16_t* p) {
        return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
    }
    static float widen(uint16_t h) { return f16_to_f32(h); }
};
struct Bf16W {
    using T = uint16_t;
    static float32x4_t load4(const uint16_t* p) {
        return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16));
    }
    static float widen(uint16_t h) { return bf16_to_f32(h); }
};

// Y[t, r] = W[r] . X[t] for NT tokens: one weight row load feeds NT accumulators. Every output
// is one 4-lane FMA chain over k, a horizontal add and an in-order tail, whatever NT is, so
// results do not depend on how the caller splits tokens.
template <typename W, int NT>
QE_NEON_INLINE void gemm_float_tile(const typename W::T* wr, const float* x, int64_t ldx, float* y,
                                    int64_t ldy, int64_t k) {
    float32x4_t acc[NT];
    for (auto& a : acc) a = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 4 <= k; i += 4) {
        const float32x4_t wv = W::load4(wr + i);
        for (int t = 0; t < NT; ++t) acc[t] = vfmaq_f32(acc[t], wv, vld1q_f32(x + t * ldx + i));
    }
    for (int t = 0; t < NT; ++t) {
        float sum = vaddvq_f32(acc[t]);
        for (int64_t j = i; j < k; ++j) sum += W::widen(wr[j]) * x[t * ldx + j];
        y[t * ldy] = sum;
    }
}

template <typename W>
void gemm_float(const typename W::T* w, int64_t ldw, const float* x, int64_t ldx, int64_t m,
                float* y, int64_t ldy, int64_t rows, int64_t k) {
    for (int64_t t = 0; t < m; t += 4) {
        const float* xt = x + t * ldx;
        float* yt = y + t * ldy;
        for (int64_t r = 0; r < rows; ++r) {
            switch (m - t >= 4 ? 4 : m - t) {
                case 4:
                    gemm_float_tile<W, 4>(w + r * ldw, xt, ldx, yt + r, ldy, k);
                    break;
                case 3:
                    gemm_float_tile<W, 3>(w + r * ldw, xt, ldx, yt + r, ldy, k);
                    break;
                case 2:
                    gemm_float_tile<W, 2>(w + r * ldw, xt, ldx, yt + r, ldy, k);
                    break;
                default:
                    gemm_float_tile<W, 1>(w + r * ldw, xt, ldx, yt + r, ldy, k);
                    break;
            }
        }
    }
}

}  // namespace

void gemv_f32(const float* w, int64_t ldw, const float* x, float* y, int64_t rows, int64_t k) {
    const int64_t k8 = k & ~int64_t{7};
    for (int64_t r = 0; r < rows; ++r) {
        const float* wr = w + r * ldw;
        float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
        int64_t i = 0;
        for (; i < k8; i += 8) {
            acc0 = vfmaq_f32(acc0, vld1q_f32(wr + i), vld1q_f32(x + i));
            acc1 = vfmaq_f32(acc1, vld1q_f32(wr + i + 4), vld1q_f32(x + i + 4));
        }
        float acc = vaddvq_f32(vaddq_f32(acc0, acc1));
        for (; i < k; ++i) acc += wr[i] * x[i];
        y[r] = acc;
    }
}

void gemm_f32(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t m, float* y,
              int64_t ldy, int64_t rows, int64_t k) {
    gemm_float<F32W>(w, ldw, x, ldx, m, y, ldy, rows, k);
}

void gemm_f16(const uint16_t* w, int64_t ldw, const float* x, int64_t ldx, int64_t m, float* y,
              int64_t ldy, int64_t rows, int64_t k) {
    gemm_float<F16W>(w, ldw, x, ldx, m, y, ldy, rows, k);
}

void gemm_bf16(const uint16_t* w, int64_t ldw, const float* x, int64_t ldx, int64_t m, float* y,
               int64_t ldy, int64_t rows, int64_t k) {
    gemm_float<Bf16W>(w, ldw, x, ldx, m, y, ldy, rows, k);
}

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
        const float32x4_t lo = vdupq_n_f32(-127.0f), hi = vdupq_n_f32(127.0f);
        int32x4_t sum = vdupq_n_s32(0);
        int16x4_t q16[8];
        for (int i = 0; i < 8; ++i) {
            // Clamp, then round half away from zero (fcvtas = std::lround), as ref: fmaxnm and
            // fminnm drop a NaN like std::fmax/fmin, so NaN -> -127 and inf -> +-127.
            const float32x4_t c = vminnmq_f32(vmaxnmq_f32(vmulq_n_f32(v[i], inv), lo), hi);
            const int32x4_t q = vcvtaq_s32_f32(c);
            sum = vaddq_s32(sum, q);
            q16[i] = vmovn_s32(q);
        }
        for (int i = 0; i < 4; ++i)
            vst1_s8(out[b].q + 8 * i, vmovn_s16(vcombine_s16(q16[2 * i], q16[2 * i + 1])));
        out[b].d = d;
        out[b].sum = vaddvq_s32(sum);
    }
}

void gemv_q8a(const PackedMatrix& w, const BlockQ8A* x, float* y, int64_t g_begin, int64_t g_end) {
    with_format(w.format,
                [&](auto fmt) { gemm<decltype(fmt)::value>(w, x, 1, y, 0, g_begin, g_end); });
}

void gemm_q8a(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
              int64_t g_begin, int64_t g_end) {
    with_format(w.format,
                [&](auto fmt) { gemm<decltype(fmt)::value>(w, x, m, y, ldy, g_begin, g_end); });
}

void dequantize_row(const PackedMatrix& w, int64_t r, float* out) {
    const int64_t g = r / kRowPack;
    const int rr = int(r % kRowPack);
    if (w.format == WeightFormat::kQ6k) {
        // One row per token (embedding lookup), off the hot path: q6k uses ref's loop.
        ref::dequantize_row(w, r, out);
        return;
    }
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
