// SPDX-License-Identifier: Apache-2.0
// AVX-512 VNNI W4A8/W8A8 products: two row groups per 512-bit vector. Lanes 0-7 hold the 8
// rows of group g, lanes 8-15 those of group g + 1: the same step of both groups is one
// 64-byte vector built from two 32-byte loads, the activations' 4 bytes are broadcast to all
// 16 lanes, and one vpdpbusd does 64 multiply-adds: the prefill product. Decode (one token)
// and a trailing odd group use the 256-bit VNNI code (EVEX vpdpbusd) from matmul_q8a_ymm_inl.h.
// The float combination repeats `ref` op by op, so results are ref's bits.
// Compiled with -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512vnni (per file).
#include <immintrin.h>

#include <cstring>

#include "kernels/format_dispatch.h"
#include "kernels/kernels.h"
#include "kernels/x86/avx512_inl.h"

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

using x86::Acc2;
using x86::combine2;
using x86::finish2;
using x86::load_scales;
using x86::Scales2;
using x86::store16;

// Two 32-byte records (group g and g + 1) as one vector.
static inline __m512i load_pair(const uint8_t* a, const uint8_t* b) {
    return _mm512_inserti64x4(
        _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), 1);
}

// 8 step vectors of two groups' codes. q4: low/high nibbles; q8g32: the unsigned bytes; q6k:
// the low nibbles with the high 2 bits ORed in (as ymm::unpack_q6 in matmul_q8a_ymm_inl.h).
template <WeightFormat F>
static inline void unpack2(const uint8_t* r0, const uint8_t* r1, __m512i* w) {
    if constexpr (F == WeightFormat::kQ8g32) {
        for (int s = 0; s < 8; ++s) w[s] = load_pair(r0 + 32 * s, r1 + 32 * s);
    } else {
        const __m512i mask = _mm512_set1_epi8(0x0f);
        for (int c = 0; c < 4; ++c) {
            const __m512i v = load_pair(r0 + 32 * c, r1 + 32 * c);
            w[2 * c] = _mm512_and_si512(v, mask);
            w[2 * c + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
        }
        if constexpr (F == WeightFormat::kQ6k) {
            const __m512i hmask = _mm512_set1_epi8(0x30);
            for (int h = 0; h < 2; ++h) {
                const int64_t off = kQ6HighOffset + 32 * h;
                const __m512i v = load_pair(r0 + off, r1 + off);
                __m512i* wh = w + 4 * h;
                wh[0] = _mm512_or_si512(wh[0], _mm512_and_si512(_mm512_slli_epi16(v, 4), hmask));
                wh[1] = _mm512_or_si512(wh[1], _mm512_and_si512(_mm512_slli_epi16(v, 2), hmask));
                wh[2] = _mm512_or_si512(wh[2], _mm512_and_si512(v, hmask));
                wh[3] = _mm512_or_si512(wh[3], _mm512_and_si512(_mm512_srli_epi16(v, 2), hmask));
            }
        }
    }
}

// Broadcast of step s's 4 activation bytes, from memory (a load-port broadcast, not port 5).
static inline __m512i bcast(const BlockQ8A& x, int s) {
    int32_t v;
    std::memcpy(&v, x.q + 4 * s, 4);
    return _mm512_set1_epi32(v);
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
    __m512i a1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[1], bcast(x, 1));
    a0 = _mm512_dpbusd_epi32(a0, w[0], bcast(x, 0));
    for (int s = 2; s < 8; s += 2) {
        a0 = _mm512_dpbusd_epi32(a0, w[s], bcast(x, s));
        a1 = _mm512_dpbusd_epi32(a1, w[s + 1], bcast(x, s + 1));
    }
    return _mm512_add_epi32(a0, a1);
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
    Acc2 a[T];
    for (int64_t b = 0; b < nb; ++b) {
        __m512i wv[8];
        unpack2<F>(q0 + b * qb, q1 + b * qb, wv);
        const Scales2 sc = load_scales<F>(s0 + b * sb, s1 + b * sb);
#pragma GCC unroll 16
        for (int t = 0; t < T; ++t) {
            const BlockQ8A& xb = x[t * nb + b];
            combine2<F>(a[t], dot2<F>(wv, xb), sc, xb, xs[b * lds + t]);
        }
    }
    for (int t = 0; t < T; ++t) store16(y + t * ldy, finish2<F>(a[t], w, g), w, g);
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
    // q4ag32 and q4k take each block's scaled sum d * float(sum): computed here once for all
    // row pairs instead of per pair and token (two of the ~17 vector ops per token and
    // block). The sums of a chunk of tokens live on the stack, so weights are streamed once
    // per chunk: 256 tokens for k = 1024, 72 for k = 3584.
    alignas(64) float sums[has_block_min(F) ? ymm::kMaxSums : 1];
    int64_t chunk = m;
    if constexpr (has_block_min(F)) {
        chunk = ymm::chunk_tokens(nb);
        if (chunk == 0) {  // k > 32768: the 256-bit kernel, same bits
            ymm::gemm_format<F>(w, x, m, y, ldy, g_begin, g_end);
            return;
        }
    }
    for (int64_t t0 = 0; t0 < m; t0 += chunk) {
        const int64_t mc = m - t0 < chunk ? m - t0 : chunk;
        const BlockQ8A* xc = x + t0 * nb;
        float* yc = y + t0 * ldy;
        if constexpr (has_block_min(F)) ymm::scaled_sums(xc, mc, nb, sums);
        int64_t g = g_begin;
        for (; g + 2 <= g_end; g += 2) {
            int64_t t = 0;
            for (; t + 8 <= mc; t += 8)
                tile2<F, 8>(w, xc + t * nb, sums + t, mc, yc + t * ldy, ldy, g);
            if (t + 4 <= mc) {
                tile2<F, 4>(w, xc + t * nb, sums + t, mc, yc + t * ldy, ldy, g);
                t += 4;
            }
            switch (mc - t) {
                case 3:
                    tile2<F, 3>(w, xc + t * nb, sums + t, mc, yc + t * ldy, ldy, g);
                    break;
                case 2:
                    tile2<F, 2>(w, xc + t * nb, sums + t, mc, yc + t * ldy, ldy, g);
                    break;
                case 1:
                    tile2<F, 1>(w, xc + t * nb, sums + t, mc, yc + t * ldy, ldy, g);
                    break;
                default:
                    break;
            }
        }
        if (g < g_end) ymm::gemm_format<F>(w, xc, mc, yc, ldy, g, g_end);
    }
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
