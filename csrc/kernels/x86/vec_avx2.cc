// SPDX-License-Identifier: Apache-2.0
// AVX2 + FMA + F16C vector kernels: conversions, the RMSNorm variants, l2 norm, RoPE, softmax
// and the SiLU/sigmoid gates. Compiled with -mavx2 -mfma -mf16c (per file,
// CMakeLists.txt); only called through tables that require AVX2, FMA and F16C.
#include <immintrin.h>

#include <cmath>

#include "kernels/kernels.h"
#include "kernels/x86/avx2_inl.h"

namespace qe::avx2 {

using x86::exp_ps;
using x86::hsum;
using x86::load_partial;
using x86::sigmoid_ps;
using x86::store_partial;

// ---- conversions -------------------------------------------------------------------------------

void cvt_f16_f32(const uint16_t* in, float* out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(
            out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
    }
    ref::cvt_f16_f32(in + i, out + i, n - i);
}

void cvt_bf16_f32(const uint16_t* in, float* out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i v =
            _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i)));
        _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
    }
    ref::cvt_bf16_f32(in + i, out + i, n - i);
}

void cvt_f32_f16(const float* in, uint16_t* out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT));
    }
    ref::cvt_f32_f16(in + i, out + i, n - i);
}

// ---- norms
// ---------------------------------------------------------------------------------------

namespace {

static inline float sum_squares(const float* x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
        a0 = _mm256_fmadd_ps(v0, v0, a0);
        a1 = _mm256_fmadd_ps(v1, v1, a1);
    }
    if (i + 8 <= n) {
        const __m256 v = _mm256_loadu_ps(x + i);
        a0 = _mm256_fmadd_ps(v, v, a0);
        i += 8;
    }
    float s = hsum(_mm256_add_ps(a0, a1));
    for (; i < n; ++i) s += x[i] * x[i];
    return s;
}

// y = x * inv * w (optionally * silu(z)), 8 lanes at a time, tail masked through a buffer.
template <bool kGated, bool kWeighted>
static inline void scale_row(const float* x, const float* w, const float* z, float* y, int64_t n,
                             float inv, float scale) {
    const __m256 vi = _mm256_set1_ps(inv), vs = _mm256_set1_ps(scale);
    auto one = [&](__m256 xv, __m256 wv, __m256 zv) {
        __m256 v = _mm256_mul_ps(xv, vi);
        if constexpr (kWeighted) {
            v = kGated ? _mm256_mul_ps(wv, v) : _mm256_mul_ps(v, wv);
        } else {
            v = _mm256_mul_ps(v, vs);
        }
        if constexpr (kGated) v = _mm256_mul_ps(v, _mm256_mul_ps(zv, sigmoid_ps(zv)));
        return v;
    };
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 wv = kWeighted ? _mm256_loadu_ps(w + i) : vs;
        const __m256 zv = kGated ? _mm256_loadu_ps(z + i) : vs;
        _mm256_storeu_ps(y + i, one(_mm256_loadu_ps(x + i), wv, zv));
    }
    if (i < n) {
        const __m256 wv = kWeighted ? load_partial(w + i, n - i) : vs;
        const __m256 zv = kGated ? load_partial(z + i, n - i) : vs;
        store_partial(y + i, one(load_partial(x + i, n - i), wv, zv), n - i);
    }
}

}  // namespace

void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        const float inv = 1.0f / std::sqrt(sum_squares(x + r * n, n) / float(n) + eps);
        scale_row<false, true>(x + r * n, w, nullptr, y + r * n, n, inv, 1.0f);
    }
}

void rms_norm_gated(const float* x, const float* w, const float* z, float* y, int64_t rows,
                    int64_t n, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        const float inv = 1.0f / std::sqrt(sum_squares(x + r * n, n) / float(n) + eps);
        scale_row<true, true>(x + r * n, w, z + r * n, y + r * n, n, inv, 1.0f);
    }
}

void l2_norm(const float* x, float* y, int64_t rows, int64_t n, int64_t ld, float eps,
             float scale) {
    for (int64_t r = 0; r < rows; ++r) {
        const float inv = 1.0f / std::sqrt(sum_squares(x + r * ld, n) + eps);
        scale_row<false, false>(x + r * ld, nullptr, nullptr, y + r * ld, n, inv, scale);
    }
}

// ---- RoPE, softmax, gates ----------------------------------------------------------------------

void rope(float* x, int64_t n_heads, int64_t ld, const float* cos, const float* sin, int64_t half) {
    for (int64_t h = 0; h < n_heads; ++h) {
        float* a = x + h * ld;
        float* b = a + half;
        int64_t f = 0;
        for (; f + 8 <= half; f += 8) {
            const __m256 av = _mm256_loadu_ps(a + f), bv = _mm256_loadu_ps(b + f);
            const __m256 c = _mm256_loadu_ps(cos + f), s = _mm256_loadu_ps(sin + f);
            // separately rounded products, as ref: exact
            _mm256_storeu_ps(a + f, _mm256_sub_ps(_mm256_mul_ps(av, c), _mm256_mul_ps(bv, s)));
            _mm256_storeu_ps(b + f, _mm256_add_ps(_mm256_mul_ps(bv, c), _mm256_mul_ps(av, s)));
        }
        for (; f < half; ++f) {
            const float av = a[f], bv = b[f];
            a[f] = av * cos[f] - bv * sin[f];
            b[f] = bv * cos[f] + av * sin[f];
        }
    }
}

void softmax(float* x, int64_t n) {
    __m256 mv = _mm256_set1_ps(-__builtin_inff());
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(_mm256_loadu_ps(x + i), mv);
    float mx = x86::hmax(mv);
    for (; i < n; ++i) mx = std::fmax(mx, x[i]);
    const __m256 m = _mm256_set1_ps(mx);
    __m256 sum = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
        _mm256_storeu_ps(x + i, e);
        sum = _mm256_add_ps(sum, e);
    }
    if (i < n) {
        const __m256 e = exp_ps(_mm256_sub_ps(load_partial(x + i, n - i), m));
        // zero the padding lanes (exp(0 - max) is not 0) before summing
        const __m256 keep = _mm256_cmp_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7),
                                          _mm256_set1_ps(float(n - i)), _CMP_LT_OQ);
        const __m256 ek = _mm256_and_ps(e, keep);
        store_partial(x + i, ek, n - i);
        sum = _mm256_add_ps(sum, ek);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / hsum(sum));
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    for (; i < n; ++i) x[i] *= _mm256_cvtss_f32(inv);
}

void silu_mul(const float* a, const float* b, float* out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 av = _mm256_loadu_ps(a + i);
        _mm256_storeu_ps(out + i,
                         _mm256_mul_ps(_mm256_mul_ps(av, sigmoid_ps(av)), _mm256_loadu_ps(b + i)));
    }
    if (i < n) {
        const __m256 av = load_partial(a + i, n - i);
        store_partial(out + i,
                      _mm256_mul_ps(_mm256_mul_ps(av, sigmoid_ps(av)), load_partial(b + i, n - i)),
                      n - i);
    }
}

void sigmoid_mul(const float* x, const float* g, float* out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(out + i,
                         _mm256_mul_ps(_mm256_loadu_ps(x + i), sigmoid_ps(_mm256_loadu_ps(g + i))));
    }
    if (i < n) {
        store_partial(
            out + i,
            _mm256_mul_ps(load_partial(x + i, n - i), sigmoid_ps(load_partial(g + i, n - i))),
            n - i);
    }
}

}  // namespace qe::avx2
