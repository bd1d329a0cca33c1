// SPDX-License-Identifier: Apache-2.0
// Kernel families: one signature per family, implemented once per ISA in a namespace named by
// the ISA tag (qe::ref, qe::avx2, qe::neon, ...). Kernels never allocate, throw, log or spawn
// threads; the op layer checks shapes once and splits the work.
#pragma once

#include <cstdint>

namespace qe {

// y[r] = sum_k w[r, k] * x[k] for r in [0, rows).
// w: [rows, k], k contiguous, row stride `ldw` floats. x: [k]. y: [rows].
// Any k >= 0 (tails handled); no alignment required. Accumulation order is ISA-specific, so
// results agree with `ref` to a few ulps times sqrt(k), not bit for bit.
using GemvF32Fn = void (*)(const float* w, int64_t ldw, const float* x, float* y, int64_t rows,
                           int64_t k);

#define QE_DECLARE_KERNELS(isa)                                                             \
    namespace isa {                                                                         \
    void gemv_f32(const float* w, int64_t ldw, const float* x, float* y, int64_t rows,      \
                  int64_t k);                                                               \
    }

QE_DECLARE_KERNELS(ref)
#if defined(__x86_64__) || defined(_M_X64)
QE_DECLARE_KERNELS(avx2)
#endif
#if defined(__aarch64__)
QE_DECLARE_KERNELS(neon)
#endif

#undef QE_DECLARE_KERNELS

}  // namespace qe
