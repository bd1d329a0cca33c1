// SPDX-License-Identifier: Apache-2.0
// AVX-512 gated delta rule: the avx2 algorithm (delta_avx2.cc) on 16-lane vectors. Column
// tiles of 64 (4 vectors): a tile of S is dk * 256 bytes (32 KiB for dk = 128), so pass 2
// re-reads it from L1. Each column's sum over the key dim runs in index order with fused
// multiply-adds, like the avx2 version. Compiled with the avx512_vnni table's flags (per file);
// it needs only AVX-512F.
#include <immintrin.h>

#include "kernels/kernels.h"

namespace qe::avx512_vnni {
namespace {

template <int J>
static inline void delta_tile(float* s, const float* q, const float* k, const float* v, float a,
                              float b, float* o, int64_t dk, int64_t dv, int64_t j0) {
    const __m512 va = _mm512_set1_ps(a);
    __m512 e[J];
    for (int jj = 0; jj < J; ++jj) e[jj] = _mm512_setzero_ps();
    for (int64_t i = 0; i < dk; ++i) {
        float* row = s + i * dv + j0;
        const __m512 ki = _mm512_set1_ps(k[i]);
        for (int jj = 0; jj < J; ++jj) {
            const __m512 sv = _mm512_mul_ps(_mm512_loadu_ps(row + 16 * jj), va);
            _mm512_storeu_ps(row + 16 * jj, sv);
            e[jj] = _mm512_fmadd_ps(sv, ki, e[jj]);
        }
    }
    __m512 delta[J], out[J];
    const __m512 vb = _mm512_set1_ps(b);
    for (int jj = 0; jj < J; ++jj) {
        delta[jj] = _mm512_mul_ps(vb, _mm512_sub_ps(_mm512_loadu_ps(v + j0 + 16 * jj), e[jj]));
        out[jj] = _mm512_setzero_ps();
    }
    for (int64_t i = 0; i < dk; ++i) {
        float* row = s + i * dv + j0;
        const __m512 ki = _mm512_set1_ps(k[i]), qi = _mm512_set1_ps(q[i]);
        for (int jj = 0; jj < J; ++jj) {
            const __m512 sv = _mm512_fmadd_ps(ki, delta[jj], _mm512_loadu_ps(row + 16 * jj));
            _mm512_storeu_ps(row + 16 * jj, sv);
            out[jj] = _mm512_fmadd_ps(sv, qi, out[jj]);
        }
    }
    for (int jj = 0; jj < J; ++jj) _mm512_storeu_ps(o + j0 + 16 * jj, out[jj]);
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
        for (; j0 + 64 <= dv; j0 += 64) delta_tile<4>(s, qt, kt, vt, a, b, ot, dk, dv, j0);
        for (; j0 + 16 <= dv; j0 += 16) delta_tile<1>(s, qt, kt, vt, a, b, ot, dk, dv, j0);
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

}  // namespace qe::avx512_vnni
