// SPDX-License-Identifier: Apache-2.0
// AVX-512 VNNI W4A8/W8A8 products: two row groups per 512-bit vector. Lanes 0-7 hold the 8
// rows of group g, lanes 8-15 those of group g + 1: the same step of both groups is one
// 64-byte vector built from two 32-byte loads, the activations' 4 bytes are broadcast to all
// 16 lanes, and one vpdpbusd does 64 multiply-adds: the prefill product. Decode (one token)
// and a trailing odd group use the 256-bit VNNI code (EVEX vpdpbusd) from matmul_q8a_ymm_inl.h.
// Unpacking, row factors, the float combination (ref's operations, so ref's bits) and the token
// loops are matmul_q8a_inl.h's, for 16-row vectors; this file adds the two-group tile.
// Compiled with -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512vnni (per file).
#include <immintrin.h>

#include <cstring>

#include "kernels/format_dispatch.h"
#include "kernels/kernels.h"

// GCC 12's own AVX-512 intrinsics (_mm512_undefined_*, used inside zext/insert/cvtph) trip
// -W(maybe-)uninitialized when inlined (GCC bug 105593): a false positive in the compiler headers.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace qe::avx512_vnni {

// The 256-bit path (decode, and a trailing odd row group): the avx_vnni code on EVEX vpdpbusd.
namespace ymm {
namespace {

static inline __m256i dpbusd(__m256i acc, __m256i w, __m256i x) {
    return _mm256_dpbusd_epi32(acc, w, x);
}

#include "kernels/x86/matmul_vnni_ymm_inl.h"

}  // namespace

#include "kernels/x86/matmul_q8a_ymm_inl.h"

}  // namespace ymm

namespace {

#define QE_Q8A_ROWS 16
#include "kernels/x86/matmul_q8a_inl.h"

// 8 step vectors of two groups' codes, all unsigned: q8g32 as stored (offset binary), the
// 4-bit codes, q6k's 6-bit codes.
template <WeightFormat F>
static inline void unpack2(const uint8_t* r0, const uint8_t* r1, __m512i* w) {
    if constexpr (F == WeightFormat::kQ8g32) {
        unpack_u8(w, r0, r1);
    } else if constexpr (F == WeightFormat::kQ6k) {
        unpack_q6(w, r0, r1);
    } else {
        unpack_q4(w, r0, r1);
    }
}

// The offset-code correction of a token's dot (q8g32: -128 * sum, q4g32: -8 * sum, q6k:
// -32 * sum) seeds its accumulator: the dot is exact integer arithmetic, so where the term
// enters does not matter, and this saves the subtraction after the chain.
template <WeightFormat F>
static inline __m512i dot_seed(const BlockQ8A& x) {
    if constexpr (F == WeightFormat::kQ8g32) {
        return _mm512_set1_epi32(-128 * x.sum);
    } else if constexpr (F == WeightFormat::kQ4g32) {
        return _mm512_set1_epi32(-8 * x.sum);
    } else if constexpr (F == WeightFormat::kQ6k) {
        return _mm512_set1_epi32(-32 * x.sum);
    } else {
        return _mm512_setzero_si512();
    }
}

// One token: two chains of 4, so vpdpbusd's latency hides behind the other chain.
template <WeightFormat F>
static inline __m512i dot2(const __m512i* w, const BlockQ8A& x) {
    __m512i a0 = dot_seed<F>(x);
    __m512i a1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[1], bcast_step(x.q, 1));
    a0 = _mm512_dpbusd_epi32(a0, w[0], bcast_step(x.q, 0));
    for (int s = 2; s < 8; s += 2) {
        a0 = _mm512_dpbusd_epi32(a0, w[s], bcast_step(x.q, s));
        a1 = _mm512_dpbusd_epi32(a1, w[s + 1], bcast_step(x.q, s + 1));
    }
    return _mm512_add_epi32(a0, a1);
}

// [lo | hi] with AVX-512F only (insertf32x8 would need AVX-512DQ).
static inline __m512 concat(__m256 lo, __m256 hi) {
    return _mm512_castpd_ps(
        _mm512_insertf64x4(_mm512_zextpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}

// The 16 rows' results of groups g, g + 1 (q4k, q6k: their row factors applied).
template <WeightFormat F>
static inline __m512 finish(const Acc& a, const PackedMatrix& w, int64_t g) {
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

// Stores the rows of groups g, g + 1 that exist (the last group may be partial).
static inline void store_rows(float* y, __m512 v, const PackedMatrix& w, int64_t g) {
    const int64_t r0 = g * kRowPack;
    const int64_t n = w.rows - r0 < 16 ? w.rows - r0 : 16;
    _mm512_mask_storeu_ps(y + r0, __mmask16((1u << n) - 1u), v);
}

// T tokens (x, xs, y at the first) times row groups g, g + 1. xs: the tokens' scaled sums,
// block b's at xs[b * lds + t] (read by q4ag32 and q4k only).
template <WeightFormat F, int T>
static inline void tile2(const PackedMatrix& w, const BlockQ8A* x, const float* xs, int64_t lds,
                         float* y, int64_t ldy, int64_t g) {
    constexpr int64_t qb = quant_record_bytes(F), sb = scale_record_bytes(F);
    const int64_t nb = w.blocks;
    const uint8_t* q0 = w.quants + g * nb * qb;
    const uint8_t* q1 = q0 + nb * qb;
    const uint8_t* s0 = w.scales + g * nb * sb;
    const uint8_t* s1 = s0 + nb * sb;
    Acc a[T];
    for (int64_t b = 0; b < nb; ++b) {
        // The same block of the next row pair, one pair ahead (into L2), as the 256-bit kernels
        // do: a serving step's few tokens leave the product as memory-bound as decoding, and a
        // pair's records (2 x k/32 records) are too short for the hardware prefetchers.
        const char* next = reinterpret_cast<const char*>(q1 + (nb + b) * qb);  // group g + 2
        for (int64_t line = 0; line < qb; line += 64) {
            _mm_prefetch(next + line, _MM_HINT_T1);
            _mm_prefetch(next + nb * qb + line, _MM_HINT_T1);  // group g + 3
        }
        if (b % (64 / sb) == 0) {
            _mm_prefetch(reinterpret_cast<const char*>(s1 + (nb + b) * sb), _MM_HINT_T1);
            _mm_prefetch(reinterpret_cast<const char*>(s1 + (2 * nb + b) * sb), _MM_HINT_T1);
        }
        __m512i wv[8];
        unpack2<F>(q0 + b * qb, q1 + b * qb, wv);
        const Scales sc = load_scales<F>(s0 + b * sb, s1 + b * sb);
#pragma GCC unroll 16
        for (int t = 0; t < T; ++t) {
            const BlockQ8A& xb = x[t * nb + b];
            combine<F>(a[t], dot2<F>(wv, xb), sc, xb, xs[b * lds + t]);
        }
    }
    for (int t = 0; t < T; ++t) store_rows(y + t * ldy, finish<F>(a[t], w, g), w, g);
}

template <WeightFormat F>
static void gemm_format(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
                        int64_t g_begin, int64_t g_end) {
    // Decode: the 256-bit kernel, one row group at a time. Measured on the 0.8b q4 model (one
    // thread, same minute): 22-23 tok/s against 17-19 for two groups per zmm, which pays for
    // building each 64-byte vector from two 32-byte loads without having the MACs to hide it.
    if (m == 1) {
        ymm::gemv_format<F>(w, x, y, g_begin, g_end);
        return;
    }
    const int64_t nb = w.blocks;
    // q4ag32 and q4k take each block's scaled sum d * float(sum): computed once per chunk of
    // tokens for all row pairs instead of per pair and token (two of the ~17 vector ops per
    // token and block).
    for_token_chunks<F>(
        x, m, nb,
        [&](int64_t t0, const BlockQ8A* xc, int64_t mc, const float* sums) QE_ALWAYS_INLINE {
            float* yc = y + t0 * ldy;
            int64_t g = g_begin;
            for (; g + 2 <= g_end; g += 2) {
                for_token_tiles(mc, [&](auto nt, int64_t t) QE_ALWAYS_INLINE {
                    tile2<F, decltype(nt)::value>(w, xc + t * nb, sums + t, mc, yc + t * ldy, ldy,
                                                  g);
                });
            }
            if (g < g_end) ymm::gemm_format<F>(w, xc, mc, yc, ldy, g, g_end);
        },
        [&]() QE_ALWAYS_INLINE {  // k > 32768: the 256-bit kernel, same bits
            ymm::gemm_format<F>(w, x, m, y, ldy, g_begin, g_end);
        });
}

}  // namespace

void gemv_q8a(const PackedMatrix& w, const BlockQ8A* x, float* y, int64_t g_begin, int64_t g_end) {
    gemm_q8a(w, x, 1, y, 0, g_begin, g_end);
}

void gemm_q8a(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
              int64_t g_begin, int64_t g_end) {
    with_format(w.format, [&](auto fmt) QE_ALWAYS_INLINE {
        gemm_format<decltype(fmt)::value>(w, x, m, y, ldy, g_begin, g_end);
    });
}

}  // namespace qe::avx512_vnni
