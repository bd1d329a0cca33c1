// SPDX-License-Identifier: Apache-2.0
// The integer core of the 256-bit VNNI products, shared by the avx_vnni table (VEX vpdpbusd)
// and the 256-bit path of the avx512_vnni table (EVEX vpdpbusd): matmul_q8a_inl.h for 8 rows,
// then the core matmul_q8a_ymm_inl.h expects (unpack_q8, dot_q4, dot_q8, dot_q6). Included
// INSIDE an anonymous namespace of a translation unit compiled with that ISA's flags (after
// <immintrin.h>, <cstring> and kernels/format_dispatch.h), after it defined
//   dpbusd(acc, w, x)   acc + per int32 lane the 4 products of unsigned w and signed x bytes
// so each ISA keeps its own copy (STYLE.md §5). q8g32 and q6k codes are used as unsigned
// bytes and the offset is removed with the block sum: dot(u8, x) - 128 * sum x,
// dot(u6, x) - 32 * sum x.

#define QE_Q8A_ROWS 8
#include "kernels/x86/matmul_q8a_inl.h"

static inline void unpack_q8(__m256i* w, const uint8_t* rec) {
    unpack_u8(w, rec);
}

// Two accumulation chains: vpdpbusd latency is 5 cycles, a block has 8 steps.
static inline __m256i dot_u8(const __m256i* w, const BlockQ8A& x) {
    __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
    for (int s = 0; s < 8; s += 2) {
        a0 = dpbusd(a0, w[s], bcast_step(x.q, s));
        a1 = dpbusd(a1, w[s + 1], bcast_step(x.q, s + 1));
    }
    return _mm256_add_epi32(a0, a1);
}

static inline __m256i dot_q4(const __m256i* w, const BlockQ8A& x) {
    return dot_u8(w, x);
}

static inline __m256i dot_q8(const __m256i* w, const BlockQ8A& x) {
    return _mm256_sub_epi32(dot_u8(w, x), _mm256_set1_epi32(128 * x.sum));
}

static inline __m256i dot_q6(const __m256i* w, const BlockQ8A& x) {
    return _mm256_sub_epi32(dot_u8(w, x), _mm256_set1_epi32(32 * x.sum));
}

// No step-major tile dots (matmul_avx2.cc has them): one vpdpbusd chain per token would expose
// its latency, and the two chains per token of dot_u8 fit the registers.
constexpr bool kTileDotsQ4 = false;

template <int T>
static inline void tile_dots_q4(const uint8_t*, const BlockQ8A*, int64_t, __m256i*) {}
