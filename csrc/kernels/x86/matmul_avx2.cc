// SPDX-License-Identifier: Apache-2.0
// AVX2 (+FMA, F16C) matrix products: the q8a activation quantizer, the W4A8/W8A8 products
// without VNNI (pmaddubsw), and float-weight products. Compiled with -mavx2 -mfma -mf16c
// (per file, CMakeLists.txt); reached only through the avx2 table and the tables that borrow
// from it, i.e. on CPUs with AVX2, FMA and F16C.
//
// Integer dot without VNNI: pmaddubsw(u8, s8) sums two products into int16. For 4-bit codes
// (<= 15) a pair is at most 15*127*2 = 3810, so the 8 steps of a block (30480) accumulate in
// int16 before one pmaddwd widens them; q8g32 codes use the sign trick
// (|q| * sign(x, q), at most 128*127*2 = 32512 per pair) and widen every step; q6k codes are
// used unsigned (<= 63: 16002 per pair, two steps fit int16) and widened every second step.
#include <immintrin.h>

#include <cstring>

#include "kernels/format_dispatch.h"
#include "kernels/kernels.h"
#include "kernels/x86/avx2_inl.h"

namespace qe::avx2 {
namespace {

#define QE_Q8A_ROWS 8
#include "kernels/x86/matmul_q8a_inl.h"

// The integer core matmul_q8a_ymm_inl.h expects. q8g32 as signed q = u8 - 128 (xor 0x80), ready for
// the sign trick.
static inline void unpack_q8(__m256i* w, const uint8_t* rec) {
    const __m256i flip = _mm256_set1_epi8(char(0x80));
    for (int s = 0; s < 8; ++s) {
        w[s] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + 32 * s)),
                                flip);
    }
}

static inline __m256i dot_q4(const __m256i* w, const BlockQ8A& x) {
    __m256i acc = _mm256_maddubs_epi16(w[0], bcast_step(x.q, 0));
    for (int s = 1; s < 8; ++s) {
        acc = _mm256_add_epi16(acc, _mm256_maddubs_epi16(w[s], bcast_step(x.q, s)));
    }
    return _mm256_madd_epi16(acc, _mm256_set1_epi16(1));
}

static inline __m256i dot_q8(const __m256i* w, const BlockQ8A& x) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc = _mm256_setzero_si256();
    for (int s = 0; s < 8; ++s) {
        const __m256i p =
            _mm256_maddubs_epi16(_mm256_abs_epi8(w[s]), _mm256_sign_epi8(bcast_step(x.q, s), w[s]));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
    }
    return acc;
}

// Unsigned 6-bit codes: sum u6 * x over two steps in int16, widen, then remove the offset 32.
static inline __m256i dot_q6(const __m256i* w, const BlockQ8A& x) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc = _mm256_setzero_si256();
    for (int s = 0; s < 8; s += 2) {
        const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(w[s], bcast_step(x.q, s)),
                                           _mm256_maddubs_epi16(w[s + 1], bcast_step(x.q, s + 1)));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
    }
    return _mm256_sub_epi32(acc, _mm256_set1_epi32(32 * x.sum));
}

// The 4-bit dots of T tokens with one block's codes, step-major: each 32-byte chunk of the
// record is unpacked into its two steps and used by every token before the next chunk, so only
// 2 code vectors and the T int16 sums are live instead of all 8 code vectors. The same exact
// integer sums as dot_q4 (int16 partial sums of 8 steps stay within 8 * 3810), for the gemm
// tiles of 1-7 tokens, whose loops spilled with dot_q4 (16 ymm registers).
constexpr bool kTileDotsQ4 = true;

template <int T>
static inline void tile_dots_q4(const uint8_t* rec, const BlockQ8A* x, int64_t ldx, __m256i* dot) {
    const __m256i mask = _mm256_set1_epi8(0x0f);
    for (int c = 0; c < 4; ++c) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + 32 * c));
        const __m256i lo = _mm256_and_si256(v, mask);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            const int8_t* q = x[t * ldx].q;
            const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, bcast_step(q, 2 * c)),
                                               _mm256_maddubs_epi16(hi, bcast_step(q, 2 * c + 1)));
            dot[t] = c == 0 ? p : _mm256_add_epi16(dot[t], p);
            // Keeps the sum in a register here: GCC 12 otherwise reassociates the integer adds
            // into one tree per token after all 32 products, which spills them all.
            __asm__("" : "+x"(dot[t]));
        }
    }
    for (int t = 0; t < T; ++t) dot[t] = _mm256_madd_epi16(dot[t], _mm256_set1_epi16(1));
}

}  // namespace

#include "kernels/x86/matmul_q8a_ymm_inl.h"

// ---- activation quantization -------------------------------------------------------------------

void quantize_q8a(const float* x, BlockQ8A* out, int64_t k) {
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    for (int64_t b = 0; b < k / kBlockK; ++b) {
        const float* xb = x + b * kBlockK;
        __m256 v[4];
        __m256 amax = _mm256_setzero_ps();
        for (int i = 0; i < 4; ++i) {
            v[i] = _mm256_loadu_ps(xb + 8 * i);
            // max(|x|, amax) returns amax when |x| is NaN, like fmax in ref.
            amax = _mm256_max_ps(_mm256_andnot_ps(sign_mask, v[i]), amax);
        }
        const float d = x86::hmax(amax) / 127.0f;
        const __m256 inv = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
        __m256i qi[4];
        for (int i = 0; i < 4; ++i) {
            // clamp (NaN -> -127 as fmax/fmin in ref), then round half away from zero exactly:
            // t = trunc|v|, +1 when the fraction |v| - t (exact) is >= 0.5.
            const __m256 c = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v[i], inv), lo), hi);
            const __m256 a = _mm256_andnot_ps(sign_mask, c);
            const __m256 t = _mm256_round_ps(a, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            const __m256 up =
                _mm256_and_ps(_mm256_cmp_ps(_mm256_sub_ps(a, t), half, _CMP_GE_OQ), one);
            const __m256 r = _mm256_or_ps(_mm256_add_ps(t, up), _mm256_and_ps(c, sign_mask));
            qi[i] = _mm256_cvtps_epi32(r);
        }
        const __m256i sum =
            _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
        const __m256i p16a = _mm256_packs_epi32(qi[0], qi[1]);
        const __m256i p16b = _mm256_packs_epi32(qi[2], qi[3]);
        const __m256i p8 = _mm256_packs_epi16(p16a, p16b);
        const __m256i ordered =
            _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[b].q), ordered);
        out[b].d = d;
        out[b].sum = x86::hsum_epi32(sum);
    }
}

void dequantize_row(const PackedMatrix& w, int64_t r, float* out) {
    ref::dequantize_row(w, r, out);
}

// ---- float weights -----------------------------------------------------------------------------

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
        float acc = x86::hsum(_mm256_add_ps(acc0, acc1));
        for (; i < k; ++i) acc += wr[i] * x[i];
        y[r] = acc;
    }
}

namespace {

static inline __m256 load8(const float* p) {
    return _mm256_loadu_ps(p);
}
static inline __m256 load8(const uint16_t* p, bool bf16) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if (bf16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}
static inline float load1(const float* p) {
    return *p;
}
static inline float load1(const uint16_t* p, bool bf16) {
    return bf16 ? bf16_to_f32(*p) : f16_to_f32(*p);
}

// T tokens against one weight row: each output uses the same operations for any T (two
// 8-lane accumulators over 16-column steps, one 8-column step, then a scalar tail), so the
// result of a token does not depend on how many tokens are batched with it.
template <int T, typename W>
static inline void dot_rows(const W* w, const float* x, int64_t ldx, int64_t k, float* y,
                            int64_t ldy, bool bf16) {
    __m256 a0[T], a1[T];
    for (int t = 0; t < T; ++t) a0[t] = a1[t] = _mm256_setzero_ps();
    auto wl = [&](int64_t i) {
        if constexpr (sizeof(W) == 4) {
            return load8(reinterpret_cast<const float*>(w) + i);
        } else {
            return load8(reinterpret_cast<const uint16_t*>(w) + i, bf16);
        }
    };
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        const __m256 w0 = wl(i), w1 = wl(i + 8);
        for (int t = 0; t < T; ++t) {
            a0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * ldx + i), a0[t]);
            a1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * ldx + i + 8), a1[t]);
        }
    }
    if (i + 8 <= k) {
        const __m256 w0 = wl(i);
        for (int t = 0; t < T; ++t)
            a0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * ldx + i), a0[t]);
        i += 8;
    }
    for (int t = 0; t < T; ++t) {
        float acc = x86::hsum(_mm256_add_ps(a0[t], a1[t]));
        for (int64_t j = i; j < k; ++j) {
            if constexpr (sizeof(W) == 4) {
                acc += load1(reinterpret_cast<const float*>(w) + j) * x[t * ldx + j];
            } else {
                acc += load1(reinterpret_cast<const uint16_t*>(w) + j, bf16) * x[t * ldx + j];
            }
        }
        y[t * ldy] = acc;
    }
}

template <typename W>
void gemm_float(const W* w, int64_t ldw, const float* x, int64_t ldx, int64_t m, float* y,
                int64_t ldy, int64_t rows, int64_t k, bool bf16) {
    for (int64_t r = 0; r < rows; ++r) {
        const W* wr = w + r * ldw;
        int64_t t = 0;
        for (; t + 4 <= m; t += 4) dot_rows<4>(wr, x + t * ldx, ldx, k, y + t * ldy + r, ldy, bf16);
        for (; t < m; ++t) dot_rows<1>(wr, x + t * ldx, ldx, k, y + t * ldy + r, ldy, bf16);
    }
}

}  // namespace

void gemm_f32(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t m, float* y,
              int64_t ldy, int64_t rows, int64_t k) {
    gemm_float(w, ldw, x, ldx, m, y, ldy, rows, k, false);
}

void gemm_f16(const uint16_t* w, int64_t ldw, const float* x, int64_t ldx, int64_t m, float* y,
              int64_t ldy, int64_t rows, int64_t k) {
    gemm_float(w, ldw, x, ldx, m, y, ldy, rows, k, false);
}

void gemm_bf16(const uint16_t* w, int64_t ldw, const float* x, int64_t ldx, int64_t m, float* y,
               int64_t ldy, int64_t rows, int64_t k) {
    gemm_float(w, ldw, x, ldx, m, y, ldy, rows, k, true);
}

}  // namespace qe::avx2
