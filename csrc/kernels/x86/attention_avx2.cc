// SPDX-License-Identifier: Apache-2.0
// AVX2 + FMA + F16C attention over one KV head (f16, f32 or q8 cache). Up to 4 query heads (a
// GQA group) share every key and value load: scores are 4 dot products per key row, the output
// accumulates 4 x 16 columns per value row in registers. Streaming over tiles of
// kAttentionTile positions with an online softmax (kernels.h): a tile's scores, their max and
// exp, then out = out * exp(m_old - m_new) + sum_j p_j v_j; out / sum at the end. Compiled with
// -mavx2 -mfma -mf16c (per file).
#include <immintrin.h>

#include <cmath>

#include "kernels/kernels.h"
#include "kernels/x86/avx2_inl.h"

namespace qe::avx2 {
namespace {

// Elements i..i+7 (or i) of a cache laid out row after row (i = j * d + e). A q8 row's 8
// elements never straddle a block: d and i are multiples of 8 and blocks are 32 wide.
static inline __m256 load8(const float* c, int64_t i) {
    return _mm256_loadu_ps(c + i);
}
static inline __m256 load8(const uint16_t* c, int64_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + i)));
}
static inline __m256 load8(const BlockQ8A* c, int64_t i) {
    const BlockQ8A& b = c[i / kBlockK];
    const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.q + i % kBlockK));
    return _mm256_mul_ps(_mm256_set1_ps(b.d), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
}
static inline float load1(const float* c, int64_t i) {
    return c[i];
}
static inline float load1(const uint16_t* c, int64_t i) {
    return f16_to_f32(c[i]);
}
static inline float load1(const BlockQ8A* c, int64_t i) {
    const BlockQ8A& b = c[i / kBlockK];
    return b.d * float(b.q[i % kBlockK]);
}

// One tile of nt positions from row j0 for Q queries: out[i] = (first ? 0 : out[i] * alpha[i])
// + sum_j p[i][j] v[j0 + j] over the tile (p with row stride ldp). Rows are addressed by element
// index (a q8 row is d / 32 blocks, not d elements of T).
template <int Q, typename T>
static void accumulate(const T* v, int64_t j0, int64_t nt, int64_t d, const float* p, int64_t ldp,
                       const float* alpha, bool first, float* out, int64_t ldo) {
    auto start = [&](int i, int64_t e) {
        return first ? _mm256_setzero_ps()
                     : _mm256_mul_ps(_mm256_loadu_ps(out + i * ldo + e), _mm256_set1_ps(alpha[i]));
    };
    const int64_t v0j = j0 * d;
    int64_t e0 = 0;
    for (; e0 + 16 <= d; e0 += 16) {
        __m256 o0[Q], o1[Q];
        for (int i = 0; i < Q; ++i) {
            o0[i] = start(i, e0);
            o1[i] = start(i, e0 + 8);
        }
        for (int64_t j = 0; j < nt; ++j) {
            const __m256 v0 = load8(v, v0j + j * d + e0), v1 = load8(v, v0j + j * d + e0 + 8);
            for (int i = 0; i < Q; ++i) {
                const __m256 pj = _mm256_broadcast_ss(p + i * ldp + j);
                o0[i] = _mm256_fmadd_ps(pj, v0, o0[i]);
                o1[i] = _mm256_fmadd_ps(pj, v1, o1[i]);
            }
        }
        for (int i = 0; i < Q; ++i) {
            _mm256_storeu_ps(out + i * ldo + e0, o0[i]);
            _mm256_storeu_ps(out + i * ldo + e0 + 8, o1[i]);
        }
    }
    for (; e0 + 8 <= d; e0 += 8) {
        __m256 o0[Q];
        for (int i = 0; i < Q; ++i) o0[i] = start(i, e0);
        for (int64_t j = 0; j < nt; ++j) {
            const __m256 v0 = load8(v, v0j + j * d + e0);
            for (int i = 0; i < Q; ++i)
                o0[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(p + i * ldp + j), v0, o0[i]);
        }
        for (int i = 0; i < Q; ++i) _mm256_storeu_ps(out + i * ldo + e0, o0[i]);
    }
    for (; e0 < d; ++e0) {
        for (int i = 0; i < Q; ++i) {
            float acc = first ? 0.0f : out[i * ldo + e0] * alpha[i];
            for (int64_t j = 0; j < nt; ++j) acc += p[i * ldp + j] * load1(v, v0j + j * d + e0);
            out[i * ldo + e0] = acc;
        }
    }
}

// exp(x[j] - m) in place over x [n]; returns their sum.
static inline float exp_sum(float* x, int64_t n, float m) {
    const __m256 mv = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 e = x86::exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv));
        _mm256_storeu_ps(x + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = x86::hsum(acc);
    for (; j < n; ++j) {
        alignas(32) float lane[8] = {x[j] - m};
        _mm256_store_ps(lane, x86::exp_ps(_mm256_load_ps(lane)));
        x[j] = lane[0];
        sum += lane[0];
    }
    return sum;
}

template <int Q, typename T>
static void attend(const float* q, int64_t ldq, const T* k, const T* v, int64_t n, int64_t d,
                   float scale, float* scratch, float* out, int64_t ldo) {
    const int64_t d8 = d & ~int64_t{7};
    const int64_t ldp = n < kAttentionTile ? n : kAttentionTile;
    float m[Q], l[Q], alpha[Q];
    for (int i = 0; i < Q; ++i) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
    }
    for (int64_t j0 = 0; j0 < n; j0 += kAttentionTile) {
        const int64_t nt = n - j0 < kAttentionTile ? n - j0 : kAttentionTile;
        float mt[Q];
        for (int i = 0; i < Q; ++i) mt[i] = -INFINITY;
        for (int64_t j = 0; j < nt; ++j) {
            const int64_t kj = (j0 + j) * d;
            __m256 acc[Q];
            for (int i = 0; i < Q; ++i) acc[i] = _mm256_setzero_ps();
            for (int64_t e = 0; e < d8; e += 8) {
                const __m256 kv = load8(k, kj + e);
                for (int i = 0; i < Q; ++i)
                    acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(q + i * ldq + e), kv, acc[i]);
            }
            for (int i = 0; i < Q; ++i) {
                float dot = x86::hsum(acc[i]);
                for (int64_t e = d8; e < d; ++e) dot += q[i * ldq + e] * load1(k, kj + e);
                scratch[i * ldp + j] = dot * scale;
                mt[i] = std::fmax(mt[i], dot * scale);
            }
        }
        for (int i = 0; i < Q; ++i) {
            const float mn = std::fmax(m[i], mt[i]);
            alpha[i] = j0 == 0 ? 0.0f : std::exp(m[i] - mn);
            m[i] = mn;
            l[i] = l[i] * alpha[i] + exp_sum(scratch + i * ldp, nt, mn);
        }
        accumulate<Q>(v, j0, nt, d, scratch, ldp, alpha, j0 == 0, out, ldo);
    }
    for (int i = 0; i < Q; ++i) {
        const float inv = 1.0f / l[i];
        for (int64_t e = 0; e < d; ++e) out[i * ldo + e] *= inv;
    }
}

template <typename T>
void attention(const float* q, int64_t ldq, int64_t n_q, const T* k, const T* v, int64_t n,
               int64_t d, float scale, float* scratch, float* out, int64_t ldo) {
    for (int64_t i = 0; i < n_q; i += 4) {
        const float* qi = q + i * ldq;
        float* oi = out + i * ldo;
        float* si = scratch + attention_scratch(i, n);
        switch (n_q - i < 4 ? n_q - i : 4) {
            case 4:
                attend<4>(qi, ldq, k, v, n, d, scale, si, oi, ldo);
                break;
            case 3:
                attend<3>(qi, ldq, k, v, n, d, scale, si, oi, ldo);
                break;
            case 2:
                attend<2>(qi, ldq, k, v, n, d, scale, si, oi, ldo);
                break;
            default:
                attend<1>(qi, ldq, k, v, n, d, scale, si, oi, ldo);
                break;
        }
    }
}

}  // namespace

void attention_f16(const float* q, int64_t ldq, int64_t n_q, const uint16_t* k, const uint16_t* v,
                   int64_t n, int64_t d, float scale, float* scratch, float* out, int64_t ldo) {
    attention(q, ldq, n_q, k, v, n, d, scale, scratch, out, ldo);
}

void attention_f32(const float* q, int64_t ldq, int64_t n_q, const float* k, const float* v,
                   int64_t n, int64_t d, float scale, float* scratch, float* out, int64_t ldo) {
    attention(q, ldq, n_q, k, v, n, d, scale, scratch, out, ldo);
}

void attention_q8(const float* q, int64_t ldq, int64_t n_q, const BlockQ8A* k, const BlockQ8A* v,
                  int64_t n, int64_t d, float scale, float* scratch, float* out, int64_t ldo) {
    attention(q, ldq, n_q, k, v, n, d, scale, scratch, out, ldo);
}

}  // namespace qe::avx2
