// SPDX-License-Identifier: Apache-2.0
// Kernel families: one signature per family, implemented once per ISA in a namespace named by
// the ISA tag (qe::ref, qe::avx2, qe::neon, ...). Kernels never allocate, throw, log or spawn
// threads; the op layer checks shapes once, quantizes activations and splits the work.
#pragma once

#include <cstdint>

#include "quant/formats.h"

namespace qe {

// y[r] = sum_k w[r, k] * x[k] for r in [0, rows).
// w: [rows, k], k contiguous, row stride `ldw` floats. x: [k]. y: [rows].
// Any k >= 0 (tails handled); no alignment required. Accumulation order is ISA-specific, so
// results agree with `ref` to a few ulps times sqrt(k), not bit for bit.
using GemvF32Fn = void (*)(const float* w, int64_t ldw, const float* x, float* y, int64_t rows,
                           int64_t k);

// Quantizes x[k] (k a multiple of 32) to k/32 q8a blocks: d = max|x|/127 (0 for an all-zero
// block), q = round-half-away(x / d), sum = sum of q. Integer outputs match `ref` exactly.
using QuantizeQ8aFn = void (*)(const float* x, BlockQ8A* out, int64_t k);

// Decode product of a packed quantized matrix with q8a activations, for the row groups
// [g_begin, g_end): y[r] = sum_k W[r, k] * x[k] for r in [8*g_begin, 8*g_end).
// x: w.blocks blocks. y: indexed by row, so it must hold 8*g_end floats; padding rows get 0.
using GemvQ8aFn = void (*)(const PackedMatrix& w, const BlockQ8A* x, float* y, int64_t g_begin,
                           int64_t g_end);

// Prefill product: Y[t, r] = sum_k W[r, k] * X[t, k] for t in [0, m) and the rows of groups
// [g_begin, g_end). X: m rows of w.blocks blocks each, contiguous. Y: row t at y + t*ldy,
// ldy >= 8*g_end.
using GemmQ8aFn = void (*)(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y,
                           int64_t ldy, int64_t g_begin, int64_t g_end);

// Dequantizes row r of a packed matrix into out[w.k] (embedding lookup, tests). Exactly the
// float32 arithmetic of docs/weight-formats.md, so every ISA matches `ref` bit for bit.
using DequantizeRowFn = void (*)(const PackedMatrix& w, int64_t r, float* out);

#define QE_DECLARE_KERNELS(isa)                                                                \
    namespace isa {                                                                            \
    void gemv_f32(const float* w, int64_t ldw, const float* x, float* y, int64_t rows,         \
                  int64_t k);                                                                  \
    void quantize_q8a(const float* x, BlockQ8A* out, int64_t k);                               \
    void gemv_q8a(const PackedMatrix& w, const BlockQ8A* x, float* y, int64_t g_begin,         \
                  int64_t g_end);                                                              \
    void gemm_q8a(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,  \
                  int64_t g_begin, int64_t g_end);                                             \
    void dequantize_row(const PackedMatrix& w, int64_t r, float* out);                         \
    }

QE_DECLARE_KERNELS(ref)
#if defined(__x86_64__) || defined(_M_X64)
namespace avx2 {
void gemv_f32(const float* w, int64_t ldw, const float* x, float* y, int64_t rows, int64_t k);
}
#endif
#if defined(__aarch64__)
// kernels/arm/: neon implements every family; neon_dotprod specializes the quantized products,
// neon_i8mm the prefill product; each borrows the rest from the next table (dispatch.cc).
QE_DECLARE_KERNELS(neon)
// Families arriving with issue 4's native runtime (signatures as on its branch); the NEON
// versions are built now and take their table slots when the families land in dispatch.cc.
namespace neon {
void gemm_f32(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t m, float* y,
              int64_t ldy, int64_t rows, int64_t k);
void gemm_f16(const uint16_t* w, int64_t ldw, const float* x, int64_t ldx, int64_t m, float* y,
              int64_t ldy, int64_t rows, int64_t k);
void gemm_bf16(const uint16_t* w, int64_t ldw, const float* x, int64_t ldx, int64_t m, float* y,
               int64_t ldy, int64_t rows, int64_t k);
void cvt_f16_f32(const uint16_t* in, float* out, int64_t n);
void cvt_bf16_f32(const uint16_t* in, float* out, int64_t n);
void cvt_f32_f16(const float* in, uint16_t* out, int64_t n);
void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps);
void rms_norm_gated(const float* x, const float* w, const float* z, float* y, int64_t rows,
                    int64_t n, float eps);
void l2_norm(const float* x, float* y, int64_t rows, int64_t n, int64_t ld, float eps,
             float scale);
void rope(float* x, int64_t n_heads, int64_t ld, const float* cos, const float* sin,
          int64_t half);
void softmax(float* x, int64_t n);
void silu_mul(const float* a, const float* b, float* out, int64_t n);
void sigmoid_mul(const float* x, const float* g, float* out, int64_t n);
void conv1d_silu(const float* w, float* state, const float* x, int64_t ldx, float* y,
                 int64_t ldy, int64_t t, int64_t c, int64_t kw);
void delta_rule(float* s, const float* q, const float* k, const float* v, int64_t ldu,
                const float* decay, const float* beta, int64_t ldg, float* o, int64_t ldo,
                int64_t t, int64_t dk, int64_t dv);
void attention_f16(const float* q, int64_t ldq, int64_t n_q, const uint16_t* k,
                   const uint16_t* v, int64_t n, int64_t d, float scale, float* scratch,
                   float* out, int64_t ldo);
void attention_f32(const float* q, int64_t ldq, int64_t n_q, const float* k, const float* v,
                   int64_t n, int64_t d, float scale, float* scratch, float* out, int64_t ldo);
}  // namespace neon
namespace neon_dotprod {
void gemv_q8a(const PackedMatrix& w, const BlockQ8A* x, float* y, int64_t g_begin, int64_t g_end);
void gemm_q8a(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
              int64_t g_begin, int64_t g_end);
}  // namespace neon_dotprod
namespace neon_i8mm {
void gemm_q8a(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
              int64_t g_begin, int64_t g_end);
}  // namespace neon_i8mm
#endif

#undef QE_DECLARE_KERNELS

}  // namespace qe
