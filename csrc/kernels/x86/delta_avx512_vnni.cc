// SPDX-License-Identifier: Apache-2.0
// AVX-512 gated delta rule: delta_rule_inl.h on 16-lane vectors, tiles of 4 vectors (64 columns).
// Compiled with the avx512_vnni table's flags (per file); it needs only AVX-512F.
#include <immintrin.h>

#include <cstring>

#include "kernels/kernels.h"

namespace qe::avx512_vnni {

using Vec = __m512;
constexpr int kLanes = 16, kTileVecs = 4, kPartials = 4;
static inline Vec vload(const float* p) {
    return _mm512_loadu_ps(p);
}
static inline void vstore(float* p, Vec v) {
    _mm512_storeu_ps(p, v);
}
static inline Vec vset1(float x) {
    return _mm512_set1_ps(x);
}
static inline Vec vzero() {
    return _mm512_setzero_ps();
}
static inline Vec vadd(Vec a, Vec b) {
    return _mm512_add_ps(a, b);
}
static inline Vec vsub(Vec a, Vec b) {
    return _mm512_sub_ps(a, b);
}
static inline Vec vmul(Vec a, Vec b) {
    return _mm512_mul_ps(a, b);
}
static inline Vec vfmadd(Vec a, Vec b, Vec c) {
    return _mm512_fmadd_ps(a, b, c);
}

#include "kernels/x86/delta_rule_inl.h"

}  // namespace qe::avx512_vnni
