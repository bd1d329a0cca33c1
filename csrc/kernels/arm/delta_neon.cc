// SPDX-License-Identifier: Apache-2.0
// Baseline NEON Gated DeltaNet pieces: the causal depthwise conv1d with SiLU and the gated delta
// rule, vectorized over the contiguous dimension (channels; the value dimension dv of the state
// rows [dk, dv]).
//
// delta_rule makes two passes over the state per token instead of ref's four: decay fused with
// e = S^T k (e accumulates the decayed rows), then the rank-1 update fused with o = S^T q (o
// accumulates the updated rows). The state (128 x 128 floats = 64 KB per head) is the largest
// memory traffic of a linear-attention layer after its weights, so halving the passes matters
// for decode. Sums over dk stay in index order per lane but use FMA: reordered per the contract.
#include <arm_neon.h>

#include <cmath>

#include "kernels/arm/neon_inl.h"
#include "kernels/conv_state_inl.h"

namespace qe::neon {

void conv1d_silu(const float* w, float* state, int64_t ldc, const float* x, int64_t ldx, float* y,
                 int64_t ldy, int64_t t, int64_t c, int64_t kw) {
    const int64_t hist = kw - 1;  // rows of state
    auto input = [&](int64_t src, int64_t ch) -> const float* {
        return src < 0 ? state + (hist + src) * ldc + ch : x + src * ldx + ch;
    };
    for (int64_t s = 0; s < t; ++s) {
        int64_t ch = 0;
        // Taps in order with separately rounded products, as ref: exact up to the SiLU.
        for (; ch + 4 <= c; ch += 4) {
            float32x4_t acc = vdupq_n_f32(0.0f);
            for (int64_t j = 0; j < kw; ++j)
                acc = vaddq_f32(acc, vmulq_f32(vld1q_f32(w + j * ldc + ch),
                                               vld1q_f32(input(s - hist + j, ch))));
            vst1q_f32(y + s * ldy + ch, vmulq_f32(acc, sigmoid_f32x4(acc)));
        }
        for (; ch < c; ++ch) {
            float acc = 0.0f;
            for (int64_t j = 0; j < kw; ++j) acc += w[j * ldc + ch] * *input(s - hist + j, ch);
            y[s * ldy + ch] = acc * sigmoid_f32(acc);
        }
    }
    conv_state_roll(state, ldc, x, ldx, t, c, kw);
}

void delta_rule(float* s, const float* q, const float* k, const float* v, int64_t ldu,
                const float* decay, const float* beta, int64_t ldg, float* o, int64_t ldo,
                int64_t t, int64_t dk, int64_t dv) {
    const int64_t dv4 = dv & ~int64_t{3};
    for (int64_t tok = 0; tok < t; ++tok) {
        const float* qt = q + tok * ldu;
        const float* kt = k + tok * ldu;
        const float* vt = v + tok * ldu;
        float* ot = o + tok * ldo;
        const float a = decay[tok * ldg], b = beta[tok * ldg];
        // Pass 1: S *= a; e = S^T k. e lives in ot (overwritten by pass 2's o).
        for (int64_t j = 0; j < dv; ++j) ot[j] = 0.0f;
        for (int64_t i = 0; i < dk; ++i) {
            float* si = s + i * dv;
            const float ki = kt[i];
            int64_t j = 0;
            for (; j < dv4; j += 4) {
                const float32x4_t sv = vmulq_n_f32(vld1q_f32(si + j), a);
                vst1q_f32(si + j, sv);
                vst1q_f32(ot + j, vfmaq_n_f32(vld1q_f32(ot + j), sv, ki));
            }
            for (; j < dv; ++j) {
                si[j] *= a;
                ot[j] += si[j] * ki;
            }
        }
        // delta = b (v - e), kept in ot; o accumulates into a second pass over ot's copy.
        // dv is the value head dim (128): a stack buffer bounds it.
        float delta[512];
        for (int64_t j0 = 0; j0 < dv; j0 += 512) {
            const int64_t nj = dv - j0 < 512 ? dv - j0 : 512;
            for (int64_t j = 0; j < nj; ++j) delta[j] = b * (vt[j0 + j] - ot[j0 + j]);
            for (int64_t j = 0; j < nj; ++j) ot[j0 + j] = 0.0f;
            // Pass 2: S += k delta^T; o = S^T q from the updated rows.
            for (int64_t i = 0; i < dk; ++i) {
                float* si = s + i * dv + j0;
                const float ki = kt[i], qi = qt[i];
                float* oj = ot + j0;
                int64_t j = 0;
                for (; j + 4 <= nj; j += 4) {
                    const float32x4_t sv = vfmaq_n_f32(vld1q_f32(si + j), vld1q_f32(delta + j), ki);
                    vst1q_f32(si + j, sv);
                    vst1q_f32(oj + j, vfmaq_n_f32(vld1q_f32(oj + j), sv, qi));
                }
                for (; j < nj; ++j) {
                    si[j] += ki * delta[j];
                    oj[j] += si[j] * qi;
                }
            }
        }
    }
}

}  // namespace qe::neon
