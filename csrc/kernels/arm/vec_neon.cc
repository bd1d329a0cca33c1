// SPDX-License-Identifier: Apache-2.0
// Baseline ARMv8.0 NEON float kernels (Advanced SIMD is mandatory on aarch64).
#include <arm_neon.h>

#include "kernels/kernels.h"

namespace qe::neon {

void gemv_f32(const float* w, int64_t ldw, const float* x, float* y, int64_t rows, int64_t k) {
    const int64_t k8 = k & ~int64_t{7};
    for (int64_t r = 0; r < rows; ++r) {
        const float* wr = w + r * ldw;
        float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
        int64_t i = 0;
        for (; i < k8; i += 8) {
            acc0 = vfmaq_f32(acc0, vld1q_f32(wr + i), vld1q_f32(x + i));
            acc1 = vfmaq_f32(acc1, vld1q_f32(wr + i + 4), vld1q_f32(x + i + 4));
        }
        float acc = vaddvq_f32(vaddq_f32(acc0, acc1));
        for (; i < k; ++i) acc += wr[i] * x[i];
        y[r] = acc;
    }
}

}  // namespace qe::neon
