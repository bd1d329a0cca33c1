// SPDX-License-Identifier: Apache-2.0
// AVX-512 helpers of the W4A8/W8A8 products over two row groups (16 rows in one vector: lanes
// 0-7 group g, lanes 8-15 group g + 1): their block factors and the float combination per
// block, which repeats ref::row_dot operation by operation (the rounded factor, then one fused
// multiply-add per term) so results are ref's bits. `static inline`, so each translation unit
// that includes it keeps its own copy (STYLE.md §5).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "quant/formats.h"

namespace qe::x86 {

static inline __m512 load_half16(const uint8_t* a, const uint8_t* b) {
    const __m256i h = _mm256_inserti128_si256(
        _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(b)), 1);
    return _mm512_cvtph_ps(h);
}

static inline __m512 load_u8x16(const uint8_t* a, const uint8_t* b) {
    const __m128i v = _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a)),
                                         _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b)));
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v));
}

static inline __m512 load_i8x16(const uint8_t* a, const uint8_t* b) {
    const __m128i v = _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a)),
                                         _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b)));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
}

struct Acc2 {
    __m512 acc = _mm512_setzero_ps();
    __m512 acc_min = _mm512_setzero_ps();
};

// A block's per-row factors of two groups, widened once and shared by every token of a tile.
struct Scales2 {
    __m512 a, b;  // q8g32/q4g32: d; q4ag32: d, m; q4k: sc, mn; q6k: sc
};

template <WeightFormat F>
static inline Scales2 load_scales(const uint8_t* s0, const uint8_t* s1) {
    if constexpr (F == WeightFormat::kQ8g32 || F == WeightFormat::kQ4g32) {
        return {load_half16(s0, s1), _mm512_setzero_ps()};
    } else if constexpr (F == WeightFormat::kQ4ag32) {
        return {load_half16(s0, s1), load_half16(s0 + 16, s1 + 16)};
    } else if constexpr (F == WeightFormat::kQ6k) {
        return {load_i8x16(s0, s1), _mm512_setzero_ps()};
    } else {
        return {load_u8x16(s0, s1), load_u8x16(s0 + 8, s1 + 8)};
    }
}

// One block of two groups for one token, as ref::row_dot (see matmul_q8a_ymm_inl.h::combine).
// xs: the block's scaled sum x.d * float(x.sum), computed once per gemm (q4ag32, q4k only),
// which a minimum term takes as a broadcast load.
template <WeightFormat F>
static inline void combine2(Acc2& a, __m512i dot, const Scales2& sc, const BlockQ8A& x,
                            const float& xs) {
    const __m512 xd = _mm512_set1_ps(x.d);
    a.acc = _mm512_fmadd_ps(_mm512_mul_ps(sc.a, xd), _mm512_cvtepi32_ps(dot), a.acc);
    if constexpr (F == WeightFormat::kQ4ag32) {
        a.acc = _mm512_fmadd_ps(sc.b, _mm512_set1_ps(xs), a.acc);
    } else if constexpr (F == WeightFormat::kQ4k) {
        a.acc_min = _mm512_fmadd_ps(sc.b, _mm512_set1_ps(xs), a.acc_min);
    }
}

// [lo | hi] with AVX-512F only (insertf32x8 would need AVX-512DQ).
static inline __m512 concat(__m256 lo, __m256 hi) {
    return _mm512_castpd_ps(
        _mm512_insertf64x4(_mm512_zextpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}

template <WeightFormat F>
static inline __m512 finish2(const Acc2& a, const PackedMatrix& w, int64_t g) {
    if constexpr (F == WeightFormat::kQ4k) {
        const float* rp = w.row_params + g * 16;  // group g: d[8] m[8], then group g + 1
        const __m512 d = concat(_mm256_loadu_ps(rp), _mm256_loadu_ps(rp + 16));
        const __m512 m = concat(_mm256_loadu_ps(rp + 8), _mm256_loadu_ps(rp + 24));
        return _mm512_sub_ps(_mm512_mul_ps(d, a.acc), _mm512_mul_ps(m, a.acc_min));
    } else if constexpr (F == WeightFormat::kQ6k) {
        const float* rp = w.row_params + g * 8;  // group g: d[8], then group g + 1
        return _mm512_mul_ps(_mm512_loadu_ps(rp), a.acc);
    } else {
        (void)w;
        (void)g;
        return a.acc;
    }
}

static inline void store16(float* y, __m512 v, const PackedMatrix& w, int64_t g) {
    const int64_t r0 = g * kRowPack;
    const int64_t n = w.rows - r0 < 16 ? w.rows - r0 : 16;
    _mm512_mask_storeu_ps(y + r0, __mmask16((1u << n) - 1u), v);
}

}  // namespace qe::x86
