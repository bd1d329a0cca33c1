// SPDX-License-Identifier: Apache-2.0
// Kernel families: one signature per family, implemented once per ISA in a namespace named by
// the ISA tag (qe::ref, qe::avx2, qe::avx_vnni, qe::avx512_vnni, qe::neon, ...). The scalar
// `ref` implementation (kernels/ref/) is the definition of every family and the fallback.
//
// Kernels never allocate, throw, log or spawn threads; they trust their arguments. The op layer
// (csrc/ops/) checks shapes once, quantizes activations, provides scratch memory and splits the
// work over threads (by row groups of the weights, by heads, by tokens).
//
// Precision contracts, per family (tests hold every table to them):
//  * exact:    the integer/bit result equals `ref` bit for bit (quantize_q8a, gemv/gemm_q8a,
//              dequantize_row, the conversions);
//  * reordered: float sums whose order is ISA-specific; they agree with `ref` within a bound
//              proportional to the number of terms times float32 epsilon (stated per family);
//  * approx:   elementwise transcendentals (exp for silu/sigmoid/softmax) within a few ulps.
#pragma once

#include <cstdint>

#include "quant/formats.h"

namespace qe {

// ---- float weight products (small tensors and the f32/f16/bf16 baseline recipes) -------------

// y[r] = sum_k w[r, k] * x[k] for r in [0, rows).
// w: [rows, k], k contiguous, row stride `ldw` floats. x: [k]. y: [rows].
// Any k >= 0 (tails handled); no alignment required. Reordered: within 1e-5*k of `ref` for
// unit-scale data.
using GemvF32Fn = void (*)(const float* w, int64_t ldw, const float* x, float* y, int64_t rows,
                           int64_t k);

// Y[t, r] = sum_k W[r, k] * X[t, k] for t in [0, m), r in [0, rows).
// w: [rows, k] row stride ldw (elements). x: [m, k] row stride ldx. y: [m, rows] row stride ldy.
// Any k, m, rows >= 0. Products and sums in float32 (f16/bf16 weights widened exactly).
// Reordered, like gemv_f32. Each output is computed by the same operations whatever m is, so
// results do not depend on how the caller splits tokens or rows.
using GemmF32Fn = void (*)(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t m,
                           float* y, int64_t ldy, int64_t rows, int64_t k);
// The same for 16-bit weights: `gemm_f16` (IEEE half) and `gemm_bf16` (bfloat16).
using GemmHalfFn = void (*)(const uint16_t* w, int64_t ldw, const float* x, int64_t ldx, int64_t m,
                            float* y, int64_t ldy, int64_t rows, int64_t k);

// ---- conversions (exact) ---------------------------------------------------------------------

// out[i] = float(in[i]) for IEEE half (`cvt_f16_f32`) or bfloat16 (`cvt_bf16_f32`) input.
// Exact; a NaN stays a NaN (hardware conversions may set the quiet bit of its payload).
using CvtHalfToF32Fn = void (*)(const uint16_t* in, float* out, int64_t n);
// out[i] = IEEE half of in[i], round to nearest even, overflow to inf, NaN stays NaN (the F16C
// `vcvtps2ph` rounding); used to store the KV cache.
using CvtF32ToF16Fn = void (*)(const float* in, uint16_t* out, int64_t n);

// ---- quantized products (W4A8 / W8A8) --------------------------------------------------------

// Quantizes x[k] (k a multiple of 32) to k/32 q8a blocks: d = max|x|/127 (0 for an all-zero
// block), q = round-half-away(clamp(x * (1/d), -127, 127)), sum = sum of q. Exact (also for
// non-finite input: NaN quantizes to -127, and an overflowing 1/d saturates).
using QuantizeQ8aFn = void (*)(const float* x, BlockQ8A* out, int64_t k);

// Decode product of a packed quantized matrix (any packed format, layout docs/weight-formats.md)
// with q8a activations, for the row groups [g_begin, g_end):
// y[r] = sum_k W[r, k] * x[k] for r in [8*g_begin, min(8*g_end, w.rows)).
// x: w.blocks blocks. y: indexed by row; padding rows (>= w.rows) are not written.
// Exact: per block the integer dot is exact, and the float combination is evaluated with the
// operations and order of `ref` (per term one fused multiply-add into the row's sum: the
// rounded factor scale * activation scale times the dot; a minimum times the block's scaled
// sum d * float(sum), rounded once), so every ISA returns the bits of `ref`. Accumulation over
// blocks is sequential in block order, per row.
using GemvQ8aFn = void (*)(const PackedMatrix& w, const BlockQ8A* x, float* y, int64_t g_begin,
                           int64_t g_end);

// Prefill product: Y[t, r] = sum_k W[r, k] * X[t, k] for t in [0, m) and the rows of groups
// [g_begin, g_end) (rows >= w.rows not written). x: m rows of w.blocks blocks, contiguous.
// y: row t at y + t*ldy. Exact, with the same per-element arithmetic as gemv_q8a.
using GemmQ8aFn = void (*)(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y,
                           int64_t ldy, int64_t g_begin, int64_t g_end);

// Dequantizes row r of a packed matrix into out[w.k] (embedding lookup, tests). Exactly the
// float32 arithmetic of docs/weight-formats.md, so every ISA matches `ref` bit for bit.
using DequantizeRowFn = void (*)(const PackedMatrix& w, int64_t r, float* out);

// ---- normalization and elementwise -----------------------------------------------------------

// RMSNorm of `rows` vectors of n: y[r, i] = x[r, i] * (1 / sqrt(mean_i x[r, i]^2 + eps)) * w[i].
// x, y: [rows, n], n contiguous (y == x allowed). w: [n] (the zero-centred norms pass 1 + w,
// formed at load). Reordered sum of squares: relative error within 1e-6 * sqrt(n).
using RmsNormFn = void (*)(const float* x, const float* w, float* y, int64_t rows, int64_t n,
                           float eps);

// The GDN output norm (spec §3.3): y = w * (x / sqrt(mean x^2 + eps)) * silu(z), per row.
// x, z, y: [rows, n], n contiguous (y may alias x or z). Reordered + approx (silu).
using RmsNormGatedFn = void (*)(const float* x, const float* w, const float* z, float* y,
                                int64_t rows, int64_t n, float eps);

// L2 normalization: y[r, i] = x[r, i] * (1 / sqrt(sum_i x[r, i]^2 + eps)) * scale.
// x, y: [rows, n] with row stride ld (y == x allowed). Reordered like rms_norm.
using L2NormFn = void (*)(const float* x, float* y, int64_t rows, int64_t n, int64_t ld, float eps,
                          float scale);

// Rotate-half RoPE in place on the first 2*half dims of each of `n_heads` vectors x + h*ld:
// (a, b) = (x[f], x[f + half]) -> (a*cos[f] - b*sin[f], b*cos[f] + a*sin[f]), f < half.
// cos, sin: [half] for this position. Exact (separately rounded products, as `ref`).
using RopeFn = void (*)(float* x, int64_t n_heads, int64_t ld, const float* cos, const float* sin,
                        int64_t half);

// In-place softmax of x[n] (n >= 1): exp(x - max) / sum. Approx exp, reordered sum.
using SoftmaxFn = void (*)(float* x, int64_t n);

// out[i] = silu(a[i]) * b[i] = a / (1 + exp(-a)) * b (SwiGLU). out may alias a or b. Approx.
using SiluMulFn = void (*)(const float* a, const float* b, float* out, int64_t n);
// out[i] = x[i] * sigmoid(g[i]) (attention output gate). out may alias x or g. Approx.
using SigmoidMulFn = void (*)(const float* x, const float* g, float* out, int64_t n);

// ---- Gated DeltaNet pieces -------------------------------------------------------------------

// Causal depthwise conv1d with SiLU over t tokens of c channels, kernel width kw (spec §3.7.2):
// y[s, ch] = silu(sum_j w[j, ch] * in[s - kw + 1 + j, ch]) where `in` is the kw-1 rows of
// `state` followed by the t rows of x. Afterwards state holds the last kw-1 input rows.
// w: [kw, c] (tap-major, c contiguous: the file's [c, 1, kw] transposed at load) and
// state: [kw-1, c], both with row stride ldc >= c, so a caller can give each thread a slice of
// channels. x: [t, c] row stride ldx. y: [t, c] row stride ldy (must not alias x).
// Taps are summed in order j = 0..kw-1 with separately rounded products (exact vs ref but for
// the silu, which is approx).
using Conv1dSiluFn = void (*)(const float* w, float* state, int64_t ldc, const float* x,
                              int64_t ldx, float* y, int64_t ldy, int64_t t, int64_t c, int64_t kw);

// The gated delta rule of one value head over t tokens (spec §3.7 item 7, the recurrence):
//   S = decay[s] * S;  e = S^T k;  delta = beta[s] * (v - e);  S += k delta^T;  o = S^T q
// s: [dk, dv] fp32, dv contiguous, updated in place. q, k: token s at q + s*ldu ([dk], already
// l2-normalized, q scaled by 1/sqrt(dk)); v: token s at v + s*ldu ([dv]). decay (= exp(g)),
// beta: token s at decay[s*ldg], beta[s*ldg]. o: token s at o + s*ldo ([dv]).
// Reordered: sums over dk in ISA order; state and outputs within 1e-5 relative of ref per step.
using DeltaRuleFn = void (*)(float* s, const float* q, const float* k, const float* v, int64_t ldu,
                             const float* decay, const float* beta, int64_t ldg, float* o,
                             int64_t ldo, int64_t t, int64_t dk, int64_t dv);

// ---- attention -------------------------------------------------------------------------------

// Softmax attention of n_q query vectors over the first n positions of one KV head:
//   out[i] = sum_j p_ij v[j],  p_i = softmax_j(scale * q_i . k[j]),  j < n (n >= 1).
// q: [n_q, d] row stride ldq. k, v: [n, d] rows contiguous (d elements apart), f16 for
// `attention_f16` (the default KV cache) or f32 for `attention_f32`. scratch: n_q * n floats.
// out: [n_q, d] row stride ldo. Reordered + approx exp.
using AttentionF16Fn = void (*)(const float* q, int64_t ldq, int64_t n_q, const uint16_t* k,
                                const uint16_t* v, int64_t n, int64_t d, float scale,
                                float* scratch, float* out, int64_t ldo);
using AttentionF32Fn = void (*)(const float* q, int64_t ldq, int64_t n_q, const float* k,
                                const float* v, int64_t n, int64_t d, float scale, float* scratch,
                                float* out, int64_t ldo);
// The same over an int8 cache (the long-context option): each key and value row is d / 32 q8a
// blocks (d a multiple of 32), element e of row j worth k[j*d/32 + e/32].d * q[e % 32] (the
// cache is written with quantize_q8a). Reordered + approx exp, like attention_f32 on the
// dequantized rows.
using AttentionQ8Fn = void (*)(const float* q, int64_t ldq, int64_t n_q, const BlockQ8A* k,
                               const BlockQ8A* v, int64_t n, int64_t d, float scale, float* scratch,
                               float* out, int64_t ldo);

// Declares every family in the namespace of an ISA tag (each table implements them all or
// borrows the next-best implementation in dispatch.cc).
#define QE_DECLARE_GEMV_F32(isa)                                                                   \
    namespace isa {                                                                                \
    void gemv_f32(const float* w, int64_t ldw, const float* x, float* y, int64_t rows, int64_t k); \
    }
#define QE_DECLARE_FLOAT_GEMM(isa)                                                               \
    namespace isa {                                                                              \
    void gemm_f32(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t m, float* y, \
                  int64_t ldy, int64_t rows, int64_t k);                                         \
    void gemm_f16(const uint16_t* w, int64_t ldw, const float* x, int64_t ldx, int64_t m,        \
                  float* y, int64_t ldy, int64_t rows, int64_t k);                               \
    void gemm_bf16(const uint16_t* w, int64_t ldw, const float* x, int64_t ldx, int64_t m,       \
                   float* y, int64_t ldy, int64_t rows, int64_t k);                              \
    }
#define QE_DECLARE_CONVERSIONS(isa)                               \
    namespace isa {                                               \
    void cvt_f16_f32(const uint16_t* in, float* out, int64_t n);  \
    void cvt_bf16_f32(const uint16_t* in, float* out, int64_t n); \
    void cvt_f32_f16(const float* in, uint16_t* out, int64_t n);  \
    }
#define QE_DECLARE_QUANTIZED(isa)                                                             \
    namespace isa {                                                                           \
    void quantize_q8a(const float* x, BlockQ8A* out, int64_t k);                              \
    void gemv_q8a(const PackedMatrix& w, const BlockQ8A* x, float* y, int64_t g_begin,        \
                  int64_t g_end);                                                             \
    void gemm_q8a(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy, \
                  int64_t g_begin, int64_t g_end);                                            \
    void dequantize_row(const PackedMatrix& w, int64_t r, float* out);                        \
    }
#define QE_DECLARE_VECTOR(isa)                                                                   \
    namespace isa {                                                                              \
    void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps); \
    void rms_norm_gated(const float* x, const float* w, const float* z, float* y, int64_t rows,  \
                        int64_t n, float eps);                                                   \
    void l2_norm(const float* x, float* y, int64_t rows, int64_t n, int64_t ld, float eps,       \
                 float scale);                                                                   \
    void rope(float* x, int64_t n_heads, int64_t ld, const float* cos, const float* sin,         \
              int64_t half);                                                                     \
    void softmax(float* x, int64_t n);                                                           \
    void silu_mul(const float* a, const float* b, float* out, int64_t n);                        \
    void sigmoid_mul(const float* x, const float* g, float* out, int64_t n);                     \
    void conv1d_silu(const float* w, float* state, int64_t ldc, const float* x, int64_t ldx,     \
                     float* y, int64_t ldy, int64_t t, int64_t c, int64_t kw);                   \
    void delta_rule(float* s, const float* q, const float* k, const float* v, int64_t ldu,       \
                    const float* decay, const float* beta, int64_t ldg, float* o, int64_t ldo,   \
                    int64_t t, int64_t dk, int64_t dv);                                          \
    void attention_f16(const float* q, int64_t ldq, int64_t n_q, const uint16_t* k,              \
                       const uint16_t* v, int64_t n, int64_t d, float scale, float* scratch,     \
                       float* out, int64_t ldo);                                                 \
    void attention_f32(const float* q, int64_t ldq, int64_t n_q, const float* k, const float* v, \
                       int64_t n, int64_t d, float scale, float* scratch, float* out,            \
                       int64_t ldo);                                                             \
    void attention_q8(const float* q, int64_t ldq, int64_t n_q, const BlockQ8A* k,               \
                      const BlockQ8A* v, int64_t n, int64_t d, float scale, float* scratch,      \
                      float* out, int64_t ldo);                                                  \
    }

// ref: every family.
QE_DECLARE_GEMV_F32(ref)
QE_DECLARE_FLOAT_GEMM(ref)
QE_DECLARE_CONVERSIONS(ref)
QE_DECLARE_QUANTIZED(ref)
QE_DECLARE_VECTOR(ref)

#if defined(__x86_64__) || defined(_M_X64)
// avx2 (+FMA, F16C): every family. avx_vnni: the integer products; avx512_vnni: the integer
// products and the delta rule; the rest comes from the table each is based on (dispatch.cc).
QE_DECLARE_GEMV_F32(avx2)
QE_DECLARE_FLOAT_GEMM(avx2)
QE_DECLARE_CONVERSIONS(avx2)
QE_DECLARE_QUANTIZED(avx2)
QE_DECLARE_VECTOR(avx2)
namespace avx_vnni {
void gemv_q8a(const PackedMatrix& w, const BlockQ8A* x, float* y, int64_t g_begin, int64_t g_end);
void gemm_q8a(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
              int64_t g_begin, int64_t g_end);
}  // namespace avx_vnni
namespace avx512_vnni {
void delta_rule(float* s, const float* q, const float* k, const float* v, int64_t ldu,
                const float* decay, const float* beta, int64_t ldg, float* o, int64_t ldo,
                int64_t t, int64_t dk, int64_t dv);
void gemv_q8a(const PackedMatrix& w, const BlockQ8A* x, float* y, int64_t g_begin, int64_t g_end);
void gemm_q8a(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
              int64_t g_begin, int64_t g_end);
}  // namespace avx512_vnni
#endif
#if defined(__aarch64__)
// kernels/arm/: neon implements every family; neon_dotprod specializes the quantized products,
// neon_i8mm the prefill product; each borrows the rest from the next table (dispatch.cc).
QE_DECLARE_GEMV_F32(neon)
QE_DECLARE_FLOAT_GEMM(neon)
QE_DECLARE_CONVERSIONS(neon)
QE_DECLARE_QUANTIZED(neon)
QE_DECLARE_VECTOR(neon)
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

#undef QE_DECLARE_GEMV_F32
#undef QE_DECLARE_FLOAT_GEMM
#undef QE_DECLARE_CONVERSIONS
#undef QE_DECLARE_QUANTIZED
#undef QE_DECLARE_VECTOR

}  // namespace qe
