// SPDX-License-Identifier: Apache-2.0
// AVX2 + FMA Gated DeltaNet kernels: the causal conv1d with SiLU and the gated delta rule
// (delta_rule_inl.h). Compiled with -mavx2 -mfma -mf16c (per file).
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "kernels/conv_state_inl.h"
#include "kernels/kernels.h"
#include "kernels/x86/avx2_inl.h"

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
    conv_state_roll(state, ldc, x, ldx, t, c, kw);
}

// The delta rule: delta_rule_inl.h on 8-lane vectors, tiles of 4 vectors (32 columns).
#define QE_DELTA_LANES 8
#include "kernels/x86/delta_rule_inl.h"

}  // namespace qe::avx2
