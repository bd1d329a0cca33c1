// SPDX-License-Identifier: Apache-2.0
// Baseline NEON softmax attention of a few queries over one KV head's cache (f16 by default,
// f32 optional): scores by 4-lane dot products over the head dimension, the NEON softmax, then
// out += p_j v_j over the positions. f16 keys and values are widened exactly with fcvtl
// (ARMv8.0); no fp16 arithmetic, so long contexts cannot overflow a half-precision sum.
#include <arm_neon.h>

#include "kernels/arm/neon_util.h"

namespace qe::neon {
namespace {

QE_NEON_INLINE float32x4_t load4(const float* p) { return vld1q_f32(p); }
QE_NEON_INLINE float32x4_t load4(const uint16_t* p) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}
QE_NEON_INLINE float widen(float v) { return v; }
QE_NEON_INLINE float widen(uint16_t h) { return f16_to_f32(h); }

template <typename T>
void attention(const float* q, int64_t ldq, int64_t n_q, const T* k, const T* v, int64_t n,
               int64_t d, float scale, float* scratch, float* out, int64_t ldo) {
    const int64_t d4 = d & ~int64_t{3};
    for (int64_t i = 0; i < n_q; ++i) {
        const float* qi = q + i * ldq;
        float* p = scratch + i * n;
        for (int64_t j = 0; j < n; ++j) {
            const T* kj = k + j * d;
            float32x4_t acc = vdupq_n_f32(0.0f);
            int64_t e = 0;
            for (; e < d4; e += 4) acc = vfmaq_f32(acc, vld1q_f32(qi + e), load4(kj + e));
            float dot = vaddvq_f32(acc);
            for (; e < d; ++e) dot += qi[e] * widen(kj[e]);
            p[j] = dot * scale;
        }
        softmax(p, n);
        float* oi = out + i * ldo;
        for (int64_t e = 0; e < d; ++e) oi[e] = 0.0f;
        for (int64_t j = 0; j < n; ++j) {
            const T* vj = v + j * d;
            const float pj = p[j];
            int64_t e = 0;
            for (; e < d4; e += 4)
                vst1q_f32(oi + e, vfmaq_n_f32(vld1q_f32(oi + e), load4(vj + e), pj));
            for (; e < d; ++e) oi[e] += pj * widen(vj[e]);
        }
    }
}

}  // namespace

void attention_f16(const float* q, int64_t ldq, int64_t n_q, const uint16_t* k,
                   const uint16_t* v, int64_t n, int64_t d, float scale, float* scratch,
                   float* out, int64_t ldo) {
    attention(q, ldq, n_q, k, v, n, d, scale, scratch, out, ldo);
}

void attention_f32(const float* q, int64_t ldq, int64_t n_q, const float* k, const float* v,
                   int64_t n, int64_t d, float scale, float* scratch, float* out, int64_t ldo) {
    attention(q, ldq, n_q, k, v, n, d, scale, scratch, out, ldo);
}

}  // namespace qe::neon
