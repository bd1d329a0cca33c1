// SPDX-License-Identifier: Apache-2.0
// Scalar reference of the vector families: conversions, the RMSNorm variants, l2 norm, RoPE,
// softmax and the SiLU/sigmoid gates. Plain loops, sequential float32 accumulation in index
// order: the definition every ISA variant is tested against, and the fallback.
#include <cmath>
#include <cstring>

#include "kernels/kernels.h"

namespace qe::ref {
namespace {

inline float sigmoid(float v) {
    return 1.0f / (1.0f + std::exp(-v));
}

inline uint32_t float_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

inline float bits_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

// IEEE half of f, round to nearest even (what vcvtps2ph with imm 0 and NEON fcvtn compute).
uint16_t f32_to_f16(float f) {
    const uint32_t x = float_bits(f);
    const uint16_t sign = uint16_t((x >> 16) & 0x8000);
    const uint32_t abs = x & 0x7fffffffu;
    if (abs > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((abs & 0x7fffffu) >> 13));  // NaN
    if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
    if (abs < 0x38800000u) {
        // Below 2^-14: a half subnormal, i.e. an integer multiple of 2^-24; scaling by 2^24 is
        // exact and rint rounds to nearest even (may carry into the smallest normal, 0x400).
        return uint16_t(sign | uint16_t(std::nearbyint(bits_float(abs) * 16777216.0f)));
    }
    const uint32_t mant = abs & 0x7fffffu;
    uint32_t h = ((((abs >> 23) - 127 + 15) << 10) | (mant >> 13));
    const uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // carries into the exponent
    return uint16_t(sign | h);
}

}  // namespace

void cvt_f16_f32(const uint16_t* in, float* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(in[i]);
}

void cvt_bf16_f32(const uint16_t* in, float* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(in[i]);
}

void cvt_f32_f16(const float* in, uint16_t* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = f32_to_f16(in[i]);
}

void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * n;
        float* yr = y + r * n;
        float ss = 0.0f;
        for (int64_t i = 0; i < n; ++i) ss += xr[i] * xr[i];
        const float inv = 1.0f / std::sqrt(ss / float(n) + eps);
        for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * inv * w[i];
    }
}

void rms_norm_gated(const float* x, const float* w, const float* z, float* y, int64_t rows,
                    int64_t n, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * n;
        const float* zr = z + r * n;
        float* yr = y + r * n;
        float ss = 0.0f;
        for (int64_t i = 0; i < n; ++i) ss += xr[i] * xr[i];
        const float inv = 1.0f / std::sqrt(ss / float(n) + eps);
        for (int64_t i = 0; i < n; ++i) yr[i] = w[i] * (xr[i] * inv) * (zr[i] * sigmoid(zr[i]));
    }
}

void l2_norm(const float* x, float* y, int64_t rows, int64_t n, int64_t ld, float eps,
             float scale) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * ld;
        float* yr = y + r * ld;
        float ss = 0.0f;
        for (int64_t i = 0; i < n; ++i) ss += xr[i] * xr[i];
        const float inv = 1.0f / std::sqrt(ss + eps);
        for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * inv * scale;
    }
}

void rope(float* x, int64_t n_heads, int64_t ld, const float* cos, const float* sin, int64_t half) {
    for (int64_t h = 0; h < n_heads; ++h) {
        float* xh = x + h * ld;
        for (int64_t f = 0; f < half; ++f) {
            const float a = xh[f], b = xh[f + half];
            xh[f] = a * cos[f] - b * sin[f];
            xh[f + half] = b * cos[f] + a * sin[f];
        }
    }
}

void softmax(float* x, int64_t n) {
    float mx = x[0];
    for (int64_t i = 1; i < n; ++i) mx = std::fmax(mx, x[i]);
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
        x[i] = std::exp(x[i] - mx);
        sum += x[i];
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void silu_mul(const float* a, const float* b, float* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = a[i] * sigmoid(a[i]) * b[i];
}

void sigmoid_mul(const float* x, const float* g, float* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * sigmoid(g[i]);
}

}  // namespace qe::ref
