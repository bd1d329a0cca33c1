// SPDX-License-Identifier: Apache-2.0
// AVX2 + FMA float kernels. Compiled with -mavx2 -mfma -mf16c (CMakeLists.txt, per file); only
// called through the avx2 kernel table, i.e. when the CPU reports AVX2, FMA and F16C.
#include <immintrin.h>

#include "kernels/kernels.h"

namespace qe::avx2 {
namespace {
inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
}  // namespace

void gemv_f32(const float* w, int64_t ldw, const float* x, float* y, int64_t rows, int64_t k) {
    const int64_t k16 = k & ~int64_t{15};
    for (int64_t r = 0; r < rows; ++r) {
        const float* wr = w + r * ldw;
        // Two accumulators hide the FMA latency on one row; rows are independent streams.
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i < k16; i += 16) {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + i), _mm256_loadu_ps(x + i), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + i + 8), _mm256_loadu_ps(x + i + 8), acc1);
        }
        float acc = hsum(_mm256_add_ps(acc0, acc1));
        for (; i < k; ++i) acc += wr[i] * x[i];
        y[r] = acc;
    }
}

}  // namespace qe::avx2
