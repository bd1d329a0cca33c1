// SPDX-License-Identifier: Apache-2.0
// Linear layers: y = x W^T for a weight in any model-file format. Quantized weights take the
// W4A8/W8A8 path (activations quantized to q8a once per call, integer dot products); float
// weights (f32/f16/bf16) multiply float activations. Several products that share one input run
// in one parallel region (q/k/v, gate/up, ...), their row groups split over the threads in one
// contiguous static range per thread, so each thread streams its own rows of every matrix.
// Every output element is computed by one kernel call over all of k, whatever the split, so
// results do not depend on the thread count.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "dispatch.h"
#include "quant/formats.h"
#include "runtime/thread_pool.h"

namespace qe {

// A weight matrix [rows, k] as the kernels consume it.
struct Matrix {
    WeightFormat format = WeightFormat::kF32;
    int64_t rows = 0, k = 0;
    const void* data = nullptr;  // plain formats: [rows, k], k contiguous
    PackedMatrix packed;         // quantized formats (data is unused)

    bool quantized() const { return is_quantized(format); }
    // Bytes a product with this matrix reads (for bandwidth reports).
    uint64_t bytes() const;
};

// One product of a batch: y[t * ldy + r] = sum_i W[r, i] * x[t, i] for r < w->rows.
struct LinearJob {
    const Matrix* w;
    float* y;
    int64_t ldy;
};

// Runs `jobs` (all with the same k) on the m rows of x ([m, k], row stride ldx).
// xq: scratch for m * k / 32 q8a blocks (used when any weight is quantized).
void linear(const KernelTable& kt, ThreadPool& pool, const float* x, int64_t ldx, int64_t m,
            BlockQ8A* xq, std::initializer_list<LinearJob> jobs);

// Row r of an embedding matrix in any format, as float32 [k].
void embedding_row(const KernelTable& kt, const Matrix& w, int64_t r, float* out);

}  // namespace qe
