// SPDX-License-Identifier: Apache-2.0
// Scalar reference kernels: the definition every ISA variant is tested against, and the
// fallback on CPUs without a better table. Plain loops, sequential accumulation in index order.
#include "kernels/kernels.h"

namespace qe::ref {

void gemv_f32(const float* w, int64_t ldw, const float* x, float* y, int64_t rows, int64_t k) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* wr = w + r * ldw;
        float acc = 0.0f;
        for (int64_t i = 0; i < k; ++i) acc += wr[i] * x[i];
        y[r] = acc;
    }
}

}  // namespace qe::ref
