// SPDX-License-Identifier: Apache-2.0
// AVX2 + FMA Gated DeltaNet kernels: the causal conv1d with SiLU and the gated delta rule.
// Compiled with -mavx2 -mfma -mf16c (per file).
//
// Delta rule tiling: the state S [dk, dv] is processed in column tiles of 32 (4 vectors). For
// a tile, pass 1 decays it and reads e = S^T k, pass 2 writes k delta^T and reads o = S^T q;
// a tile is dk * 128 bytes (16 KiB for dk = 128), so pass 2 finds it in L1. Each column's sum
// over the key dim runs in index order, as in ref, but with fused multiply-adds.
#include <immintrin.h>

#include <cmath>

#include "kernels/kernels.h"
#include "kernels/x86/avx2_util.h"

namespace qe::avx2 {

void conv1d_silu(const float* w, float* state, int64_t ldc, const float* x, int64_t ldx, float* y,
                 int64_t ldy, int64_t t, int64_t c, int64_t kw) {
    const int64_t hist = kw - 1;
    for (int64_t s = 0; s < t; ++s) {
        auto row = [&](int64_t j) {
            const int64_t src = s - hist + j;
            return src < 0 ? state + (hist + src) * ldc : x + src * ldx;
        };
        int64_t ch = 0;
        for (; ch + 8 <= c; ch += 8) {
            __m256 acc = _mm256_setzero_ps();
            for (int64_t j = 0; j < kw; ++j) {
                // product then sum, separately rounded in tap order: the bits of ref
                acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(w + j * ldc + ch),
                                                       _mm256_loadu_ps(row(j) + ch)));
            }
            _mm256_storeu_ps(y + s * ldy + ch, _mm256_mul_ps(acc, x86::sigmoid_ps(acc)));
        }
        for (; ch < c; ++ch) {
            float acc = 0.0f;
            for (int64_t j = 0; j < kw; ++j) acc += w[j * ldc + ch] * row(j)[ch];
            y[s * ldy + ch] = acc * (1.0f / (1.0f + std::exp(-acc)));
        }
    }
    for (int64_t r = 0; r < hist; ++r) {
        const int64_t src = t + r - hist;
        for (int64_t ch = 0; ch < c; ++ch) {
            state[r * ldc + ch] = src < 0 ? state[(hist + src) * ldc + ch] : x[src * ldx + ch];
        }
    }
}

namespace {

// One token on columns [j0, j0 + 8 J) of S.
template <int J>
static inline void delta_tile(float* s, const float* q, const float* k, const float* v, float a,
                              float b, float* o, int64_t dk, int64_t dv, int64_t j0) {
    const __m256 va = _mm256_set1_ps(a);
    __m256 e[J];
    for (int jj = 0; jj < J; ++jj) e[jj] = _mm256_setzero_ps();
    for (int64_t i = 0; i < dk; ++i) {
        float* row = s + i * dv + j0;
        const __m256 ki = _mm256_set1_ps(k[i]);
        for (int jj = 0; jj < J; ++jj) {
            const __m256 sv = _mm256_mul_ps(_mm256_loadu_ps(row + 8 * jj), va);
            _mm256_storeu_ps(row + 8 * jj, sv);
            e[jj] = _mm256_fmadd_ps(sv, ki, e[jj]);
        }
    }
    __m256 delta[J], out[J];
    const __m256 vb = _mm256_set1_ps(b);
    for (int jj = 0; jj < J; ++jj) {
        delta[jj] = _mm256_mul_ps(vb, _mm256_sub_ps(_mm256_loadu_ps(v + j0 + 8 * jj), e[jj]));
        out[jj] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < dk; ++i) {
        float* row = s + i * dv + j0;
        const __m256 ki = _mm256_set1_ps(k[i]), qi = _mm256_set1_ps(q[i]);
        for (int jj = 0; jj < J; ++jj) {
            const __m256 sv = _mm256_fmadd_ps(ki, delta[jj], _mm256_loadu_ps(row + 8 * jj));
            _mm256_storeu_ps(row + 8 * jj, sv);
            out[jj] = _mm256_fmadd_ps(sv, qi, out[jj]);
        }
    }
    for (int jj = 0; jj < J; ++jj) _mm256_storeu_ps(o + j0 + 8 * jj, out[jj]);
}

}  // namespace

void delta_rule(float* s, const float* q, const float* k, const float* v, int64_t ldu,
                const float* decay, const float* beta, int64_t ldg, float* o, int64_t ldo,
                int64_t t, int64_t dk, int64_t dv) {
    for (int64_t tok = 0; tok < t; ++tok) {
        const float* qt = q + tok * ldu;
        const float* kt = k + tok * ldu;
        const float* vt = v + tok * ldu;
        float* ot = o + tok * ldo;
        const float a = decay[tok * ldg], b = beta[tok * ldg];
        int64_t j0 = 0;
        for (; j0 + 32 <= dv; j0 += 32) delta_tile<4>(s, qt, kt, vt, a, b, ot, dk, dv, j0);
        for (; j0 + 8 <= dv; j0 += 8) delta_tile<1>(s, qt, kt, vt, a, b, ot, dk, dv, j0);
        for (int64_t j = j0; j < dv; ++j) {  // remaining columns, as ref
            float e = 0.0f;
            for (int64_t i = 0; i < dk; ++i) {
                s[i * dv + j] *= a;
                e += s[i * dv + j] * kt[i];
            }
            const float delta = b * (vt[j] - e);
            float acc = 0.0f;
            for (int64_t i = 0; i < dk; ++i) {
                s[i * dv + j] += kt[i] * delta;
                acc += s[i * dv + j] * qt[i];
            }
            ot[j] = acc;
        }
    }
}

}  // namespace qe::avx2
