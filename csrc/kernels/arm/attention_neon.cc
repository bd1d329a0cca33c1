// SPDX-License-Identifier: Apache-2.0
// Baseline NEON softmax attention of a few queries over one KV head's cache (f16 by default,
// f32 optional, or int8): scores by 4-lane dot products over the head dimension, streaming over
// tiles of kAttentionTile positions with an online softmax (kernels.h): a tile's scores, their
// max and exp_f32x4, then out = out * exp(m_old - m_new) + sum_j p_j v_j; out / sum at the end. f16
// keys and values are widened exactly with fcvtl (ARMv8.0); no fp16 arithmetic, so long contexts
// cannot overflow a half-precision sum.
#include <arm_neon.h>

#include <cmath>
#include <cstring>

#include "kernels/arm/neon_inl.h"

namespace qe::neon {
namespace {

// Elements i..i+3 (or i) of a cache laid out row after row (i = j * d + e); a q8 row's 4
// elements never straddle a 32-wide block (d and i are multiples of 4).
QE_NEON_INLINE float32x4_t load4(const float* c, int64_t i) {
    return vld1q_f32(c + i);
}
QE_NEON_INLINE float32x4_t load4(const uint16_t* c, int64_t i) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(c + i)));
}
QE_NEON_INLINE float32x4_t load4(const BlockQ8A* c, int64_t i) {
    const BlockQ8A& b = c[i / kBlockK];
    int32_t word;
    std::memcpy(&word, b.q + i % kBlockK, 4);
    const int16x4_t w16 = vget_low_s16(vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(word))));
    return vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(w16)), b.d);
}
QE_NEON_INLINE float widen(const float* c, int64_t i) {
    return c[i];
}
QE_NEON_INLINE float widen(const uint16_t* c, int64_t i) {
    return f16_to_f32(c[i]);
}
QE_NEON_INLINE float widen(const BlockQ8A* c, int64_t i) {
    const BlockQ8A& b = c[i / kBlockK];
    return b.d * float(b.q[i % kBlockK]);
}

template <typename T>
void attend(const float* q, int64_t ldq, int64_t n_q, const T* k, const T* v, int64_t n, int64_t d,
            float scale, float* scratch, float* out, int64_t ldo) {
    const int64_t d4 = d & ~int64_t{3};
    for (int64_t i = 0; i < n_q; ++i) {
        const float* qi = q + i * ldq;
        float* p = scratch + attention_scratch(i, n);
        float* oi = out + i * ldo;
        float m = -INFINITY, l = 0.0f;
        for (int64_t j0 = 0; j0 < n; j0 += kAttentionTile) {
            const int64_t nt = n - j0 < kAttentionTile ? n - j0 : kAttentionTile;
            float mt = -INFINITY;
            for (int64_t j = 0; j < nt; ++j) {
                const int64_t kj = (j0 + j) * d;
                float32x4_t acc = vdupq_n_f32(0.0f);
                int64_t e = 0;
                for (; e < d4; e += 4) acc = vfmaq_f32(acc, vld1q_f32(qi + e), load4(k, kj + e));
                float dot = vaddvq_f32(acc);
                for (; e < d; ++e) dot += qi[e] * widen(k, kj + e);
                p[j] = dot * scale;
                mt = std::fmax(mt, p[j]);
            }
            const float mn = std::fmax(m, mt);
            const float alpha = j0 == 0 ? 0.0f : std::exp(m - mn);
            m = mn;
            l = l * alpha + exp_sub_sum(p, nt, mn);
            if (j0 == 0) {
                for (int64_t e = 0; e < d; ++e) oi[e] = 0.0f;
            } else {
                for (int64_t e = 0; e < d; ++e) oi[e] *= alpha;
            }
            for (int64_t jj = 0; jj < nt; ++jj) {
                const int64_t vj = (j0 + jj) * d;
                const float pj = p[jj];
                int64_t e = 0;
                for (; e < d4; e += 4)
                    vst1q_f32(oi + e, vfmaq_n_f32(vld1q_f32(oi + e), load4(v, vj + e), pj));
                for (; e < d; ++e) oi[e] += pj * widen(v, vj + e);
            }
        }
        const float inv = 1.0f / l;
        for (int64_t e = 0; e < d; ++e) oi[e] *= inv;
    }
}

// Tokens one after the other: each reads the whole cache (no K/V tile sharing here yet).
template <typename T>
void attention(const float* q, int64_t ldq, int64_t ldqt, int64_t n_q, int64_t n_t, const T* k,
               const T* v, int64_t n, int64_t d, float scale, float* scratch, float* out,
               int64_t ldo, int64_t ldot) {
    for (int64_t r = 0; r < n_t; ++r) {
        attend(q + r * ldqt, ldq, n_q, k, v, n - (n_t - 1 - r), d, scale, scratch, out + r * ldot,
               ldo);
    }
}

}  // namespace

#include "kernels/attention_entries_inl.h"

}  // namespace qe::neon
