// SPDX-License-Identifier: Apache-2.0
// Scalar reference of the Gated DeltaNet kernels (docs/model.md §4.8): the causal depthwise conv1d
// with its rolling state, and the gated delta rule evaluated literally as the per-token recurrence,
// which docs/model.md §4.8 step 7 defines as the ground truth. All state and arithmetic in float32.
#include <cmath>

#include "kernels/conv_state_inl.h"
#include "kernels/kernels.h"

namespace qe::ref {

void conv1d_silu(const float* w, float* state, int64_t ldc, const float* x, int64_t ldx, float* y,
                 int64_t ldy, int64_t t, int64_t c, int64_t kw) {
    const int64_t hist = kw - 1;  // rows of state
    for (int64_t s = 0; s < t; ++s) {
        for (int64_t ch = 0; ch < c; ++ch) {
            float acc = 0.0f;
            for (int64_t j = 0; j < kw; ++j) {
                const int64_t src = s - hist + j;  // input row; < 0 reads the state
                const float in = src < 0 ? state[(hist + src) * ldc + ch] : x[src * ldx + ch];
                acc += w[j * ldc + ch] * in;
            }
            y[s * ldy + ch] = acc * (1.0f / (1.0f + std::exp(-acc)));
        }
    }
    conv_state_roll(state, ldc, x, ldx, t, c, kw);
}

void delta_rule(float* s, const float* q, const float* k, const float* v, int64_t ldu,
                const float* decay, const float* beta, int64_t ldg, float* o, int64_t ldo,
                int64_t t, int64_t dk, int64_t dv) {
    for (int64_t tok = 0; tok < t; ++tok) {
        const float* qt = q + tok * ldu;
        const float* kt = k + tok * ldu;
        const float* vt = v + tok * ldu;
        float* ot = o + tok * ldo;
        const float a = decay[tok * ldg], b = beta[tok * ldg];
        for (int64_t i = 0; i < dk * dv; ++i) s[i] *= a;  // 1. decay
        for (int64_t j = 0; j < dv; ++j) {
            float e = 0.0f;  // 2. e = S^T k
            for (int64_t i = 0; i < dk; ++i) e += s[i * dv + j] * kt[i];
            const float delta = b * (vt[j] - e);                              // 3.
            for (int64_t i = 0; i < dk; ++i) s[i * dv + j] += kt[i] * delta;  // 4. S += k d^T
        }
        for (int64_t j = 0; j < dv; ++j) {
            float acc = 0.0f;  // 5. o = S^T q from the updated state
            for (int64_t i = 0; i < dk; ++i) acc += s[i * dv + j] * qt[i];
            ot[j] = acc;
        }
    }
}

}  // namespace qe::ref
