// SPDX-License-Identifier: Apache-2.0
#include "ops/linear.h"

#include "common.h"

namespace qe {
namespace {

constexpr int kMaxJobs = 8;

// Work units of a job: row groups of 8 (the packed tile; float matrices use the same unit).
inline int64_t units(const Matrix& w) {
    return (w.rows + kRowPack - 1) / kRowPack;
}

void run_units(const KernelTable& kt, const Matrix& w, const float* x, int64_t ldx, int64_t m,
               const BlockQ8A* xq, float* y, int64_t ldy, int64_t u0, int64_t u1) {
    if (w.quantized()) {
        if (m == 1) {
            kt.gemv_q8a(w.packed, xq, y, u0, u1);
        } else {
            kt.gemm_q8a(w.packed, xq, m, y, ldy, u0, u1);
        }
        return;
    }
    const int64_t r0 = u0 * kRowPack;
    const int64_t r1 = u1 * kRowPack < w.rows ? u1 * kRowPack : w.rows;
    switch (w.format) {
        case WeightFormat::kF32: {
            // gemm also for m = 1: its per-output arithmetic does not depend on m, so a
            // prompt gives the bits of token-by-token decoding.
            const float* base = static_cast<const float*>(w.data) + r0 * w.k;
            kt.gemm_f32(base, w.k, x, ldx, m, y + r0, ldy, r1 - r0, w.k);
            break;
        }
        case WeightFormat::kF16:
        case WeightFormat::kBf16: {
            const uint16_t* base = static_cast<const uint16_t*>(w.data) + r0 * w.k;
            GemmHalfFn* const fn = w.format == WeightFormat::kF16 ? kt.gemm_f16 : kt.gemm_bf16;
            fn(base, w.k, x, ldx, m, y + r0, ldy, r1 - r0, w.k);
            break;
        }
        default:
            break;
    }
}

}  // namespace

uint64_t Matrix::bytes() const {
    if (quantized()) {
        PackedLayout layout;
        return packed_layout(format, rows, k, &layout) ? layout.total_bytes : 0;
    }
    return uint64_t(rows) * uint64_t(k) * (format == WeightFormat::kF32 ? 4 : 2);
}

void linear(const KernelTable& kt, ThreadPool& pool, const float* x, int64_t ldx, int64_t m,
            BlockQ8A* xq, std::initializer_list<LinearJob> jobs) {
    QE_CHECK(jobs.size() >= 1 && jobs.size() <= size_t(kMaxJobs), "linear: 1..8 jobs");
    const int64_t k = jobs.begin()->w->k;
    bool any_quantized = false;
    int64_t total = 0;
    int64_t offsets[kMaxJobs + 1];
    int n_jobs = 0;
    for (const LinearJob& job : jobs) {
        QE_DCHECK(job.w->k == k);
        any_quantized |= job.w->quantized();
        offsets[n_jobs++] = total;
        total += units(*job.w);
    }
    offsets[n_jobs] = total;

    if (any_quantized) {
        const int64_t nb = k / kBlockK;
        pool.for_each(m, 16, [&](int64_t t0, int64_t t1, int) {
            for (int64_t t = t0; t < t1; ++t) kt.quantize_q8a(x + t * ldx, xq + t * nb, k);
        });
    }
    const LinearJob* job_list = jobs.begin();
    pool.run([&](int thread, int n_threads) {
        int64_t begin, end;
        ThreadPool::split(total, thread, n_threads, &begin, &end);
        for (int j = 0; j < n_jobs && begin < end; ++j) {
            const int64_t lo = offsets[j], hi = offsets[j + 1];
            if (end <= lo || begin >= hi) continue;
            const int64_t u0 = (begin > lo ? begin : lo) - lo;
            const int64_t u1 = (end < hi ? end : hi) - lo;
            const LinearJob& job = job_list[j];
            run_units(kt, *job.w, x, ldx, m, xq, job.y, job.ldy, u0, u1);
        }
    });
}

void embedding_row(const KernelTable& kt, const Matrix& w, int64_t r, float* out) {
    switch (w.format) {
        case WeightFormat::kF32: {
            const float* row = static_cast<const float*>(w.data) + r * w.k;
            for (int64_t i = 0; i < w.k; ++i) out[i] = row[i];
            break;
        }
        case WeightFormat::kF16:
            kt.cvt_f16_f32(static_cast<const uint16_t*>(w.data) + r * w.k, out, w.k);
            break;
        case WeightFormat::kBf16:
            kt.cvt_bf16_f32(static_cast<const uint16_t*>(w.data) + r * w.k, out, w.k);
            break;
        default:
            kt.dequantize_row(w.packed, r, out);
            break;
    }
}

}  // namespace qe
