// SPDX-License-Identifier: Apache-2.0
// Baseline ARMv8.0 NEON float kernels: fp16/bf16 conversions, the norms, RoPE, softmax and the
// gating products. Vectors run over the contiguous dimension, 4 lanes at a time, with scalar
// tails that use the same per-element arithmetic (so results do not depend on where a tail
// starts). Precision contracts in kernels/kernels.h: conversions and RoPE are exact
// (fcvtl/fcvtn round like ref; separately rounded products), sums are reordered, exp-based
// functions use exp_f32x4 (about 2 ulp, neon_inl.h).
#include <arm_neon.h>

#include <cmath>

#include "kernels/arm/neon_inl.h"

namespace qe::neon {
namespace {

// sum_i x[i]^2, 4 lanes then a horizontal add, tail in order.
QE_NEON_INLINE float sum_squares(const float* x, int64_t n) {
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const float32x4_t a = vld1q_f32(x + i), b = vld1q_f32(x + i + 4);
        acc0 = vfmaq_f32(acc0, a, a);
        acc1 = vfmaq_f32(acc1, b, b);
    }
    float ss = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; ++i) ss += x[i] * x[i];
    return ss;
}

}  // namespace

void cvt_f16_f32(const uint16_t* in, float* out, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(out + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(in + i))));
    for (; i < n; ++i) out[i] = f16_to_f32(in[i]);
}

void cvt_bf16_f32(const uint16_t* in, float* out, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(out + i, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(in + i), 16)));
    for (; i < n; ++i) out[i] = bf16_to_f32(in[i]);
}

void cvt_f32_f16(const float* in, uint16_t* out, int64_t n) {
    // fcvtn rounds to nearest even (FPCR default), overflows to inf and keeps NaN payloads
    // quiet, exactly ref's rounding; the tail goes through the same instruction.
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1_u16(out + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(in + i))));
    for (; i < n; ++i) {
        const float16x4_t h = vcvt_f16_f32(vdupq_n_f32(in[i]));
        out[i] = vget_lane_u16(vreinterpret_u16_f16(h), 0);
    }
}

void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * n;
        float* yr = y + r * n;
        const float inv = 1.0f / std::sqrt(sum_squares(xr, n) / float(n) + eps);
        int64_t i = 0;
        for (; i + 4 <= n; i += 4)
            vst1q_f32(yr + i, vmulq_f32(vmulq_n_f32(vld1q_f32(xr + i), inv), vld1q_f32(w + i)));
        for (; i < n; ++i) yr[i] = xr[i] * inv * w[i];
    }
}

void rms_norm_gated(const float* x, const float* w, const float* z, float* y, int64_t rows,
                    int64_t n, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * n;
        const float* zr = z + r * n;
        float* yr = y + r * n;
        const float inv = 1.0f / std::sqrt(sum_squares(xr, n) / float(n) + eps);
        int64_t i = 0;
        for (; i + 4 <= n; i += 4) {
            const float32x4_t zv = vld1q_f32(zr + i);
            const float32x4_t xn = vmulq_f32(vld1q_f32(w + i), vmulq_n_f32(vld1q_f32(xr + i), inv));
            vst1q_f32(yr + i, vmulq_f32(xn, vmulq_f32(zv, sigmoid_f32x4(zv))));
        }
        for (; i < n; ++i) yr[i] = w[i] * (xr[i] * inv) * (zr[i] * sigmoid_f32(zr[i]));
    }
}

void l2_norm(const float* x, float* y, int64_t rows, int64_t n, int64_t ld, float eps,
             float scale) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * ld;
        float* yr = y + r * ld;
        const float inv = 1.0f / std::sqrt(sum_squares(xr, n) + eps);
        int64_t i = 0;
        for (; i + 4 <= n; i += 4)
            vst1q_f32(yr + i, vmulq_n_f32(vmulq_n_f32(vld1q_f32(xr + i), inv), scale));
        for (; i < n; ++i) yr[i] = xr[i] * inv * scale;
    }
}

void rope(float* x, int64_t n_heads, int64_t ld, const float* cos, const float* sin, int64_t half) {
    for (int64_t h = 0; h < n_heads; ++h) {
        float* xh = x + h * ld;
        int64_t f = 0;
        for (; f + 4 <= half; f += 4) {
            const float32x4_t a = vld1q_f32(xh + f), b = vld1q_f32(xh + f + half);
            const float32x4_t c = vld1q_f32(cos + f), s = vld1q_f32(sin + f);
            vst1q_f32(xh + f, vsubq_f32(vmulq_f32(a, c), vmulq_f32(b, s)));
            vst1q_f32(xh + f + half, vaddq_f32(vmulq_f32(b, c), vmulq_f32(a, s)));
        }
        for (; f < half; ++f) {
            const float a = xh[f], b = xh[f + half];
            xh[f] = a * cos[f] - b * sin[f];
            xh[f + half] = b * cos[f] + a * sin[f];
        }
    }
}

void softmax(float* x, int64_t n) {
    float32x4_t mv = vdupq_n_f32(x[0]);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) mv = vmaxnmq_f32(mv, vld1q_f32(x + i));
    float mx = vmaxnmvq_f32(mv);
    for (; i < n; ++i) mx = std::fmax(mx, x[i]);
    const float inv = 1.0f / exp_sub_sum(x, n, mx);
    for (i = 0; i + 4 <= n; i += 4) vst1q_f32(x + i, vmulq_n_f32(vld1q_f32(x + i), inv));
    for (; i < n; ++i) x[i] *= inv;
}

void silu_mul(const float* a, const float* b, float* out, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t av = vld1q_f32(a + i);
        vst1q_f32(out + i, vmulq_f32(vmulq_f32(av, sigmoid_f32x4(av)), vld1q_f32(b + i)));
    }
    for (; i < n; ++i) out[i] = a[i] * sigmoid_f32(a[i]) * b[i];
}

void sigmoid_mul(const float* x, const float* g, float* out, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(out + i, vmulq_f32(vld1q_f32(x + i), sigmoid_f32x4(vld1q_f32(g + i))));
    for (; i < n; ++i) out[i] = x[i] * sigmoid_f32(g[i]);
}

}  // namespace qe::neon
