// SPDX-License-Identifier: Apache-2.0
// The kernel contracts: one function type per kernel, grouped by family, each with its layouts,
// preconditions and precision. Every ISA implements a kernel under the same name in the
// namespace of its tag (qe::ref, qe::avx2, qe::avx_vnni, qe::avx512_vnni, qe::neon,
// qe::neon_dotprod, qe::neon_i8mm); the declarations at the end say which ISA implements what,
// and dispatch.cc builds one KernelTable per ISA from them. The scalar `ref`
// (kernels/ref/) is the definition of every kernel and the fallback.
//
// Families and files, kernels/<ref|x86|arm>/<family>_<tag>.cc:
//   matmul     weight products (float and packed) and the activation quantizer
//   vec        conversions, norms, RoPE, softmax, gates
//   delta      the Gated DeltaNet pieces: causal conv and the delta rule
//   attention  softmax attention over one KV head of the cache
// A header named *_inl.h holds code that is compiled as part of each file including it, under
// that file's ISA flags (included inside an ISA namespace, or with internal linkage only);
// format_dispatch.h is the one run-time switch over packed weight formats.
//
// For every kernel: it never allocates, throws, logs or spawns threads, and trusts its
// arguments. The op layer (csrc/ops/) checks shapes once, quantizes activations, provides
// scratch memory and splits the work over threads (row groups, heads, tokens). Shapes are
// outermost-first with the last dimension contiguous; ld* are row strides in elements; no
// pointer needs any alignment.
//
// Precision classes (the tests hold every table to them):
//   exact      the result equals `ref` bit for bit;
//   reordered  float sums in an ISA-specific order, within a bound proportional to the number
//              of terms times float32 epsilon (stated per kernel);
//   approx     elementwise transcendentals (exp in silu, sigmoid, softmax) within a few ulps.
#pragma once

#include <cstdint>

#include "quant/formats.h"

namespace qe {

// ==== matmul: weight products (matmul_<tag>.cc) ===============================================
// Float weights: rows of f32, f16 or bf16 (f16/bf16 widened exactly), float activations.
// Packed weights: a PackedMatrix in one of the packed formats of format_dispatch.h (q8g32,
// q4g32, q4ag32, q4k, q6k; byte layout docs/weight-formats.md), times activations quantized to
// q8a blocks (BlockQ8A: 32 int8 values, their scale d and their sum). A packed matrix is cut
// into row groups of kRowPack = 8 rows and blocks of kBlockK = 32 columns; a packed kernel
// works on whole row groups [g_begin, g_end) and writes only rows < w.rows.

// gemv_f32: y[r] = sum_k w[r, k] * x[k] for r < rows.
//   w [rows, k], row stride ldw;  x [k];  y [rows].  rows, k >= 0 (tails handled).
//   Reordered: within 1e-5 * k of ref for unit-scale data.
using GemvF32Fn = void(const float* w, int64_t ldw, const float* x, float* y, int64_t rows,
                       int64_t k);

// gemm_f32: Y[t, r] = sum_k W[r, k] * X[t, k] for t < m, r < rows.
//   w [rows, k] row stride ldw;  x [m, k] row stride ldx;  y [m, rows] row stride ldy.
//   m, rows, k >= 0. Products and sums in float32. Reordered, as gemv_f32; each output is
//   computed by the same operations whatever m is, so results do not depend on how the caller
//   splits tokens or rows.
using GemmF32Fn = void(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t m,
                       float* y, int64_t ldy, int64_t rows, int64_t k);
// gemm_f16 (IEEE half weights) and gemm_bf16 (bfloat16 weights): gemm_f32's contract.
using GemmHalfFn = void(const uint16_t* w, int64_t ldw, const float* x, int64_t ldx, int64_t m,
                        float* y, int64_t ldy, int64_t rows, int64_t k);

// quantize_q8a: x[k] -> k / 32 q8a blocks. Per block d = max|x| / 127 (0 for an all-zero
// block), q = round-half-away(clamp(x * (1/d), -127, 127)), sum = sum of q.
//   x [k], k a multiple of 32;  out [k / 32].
//   Exact, also for non-finite input (NaN quantizes to -127; an overflowing 1/d saturates).
using QuantizeQ8aFn = void(const float* x, BlockQ8A* out, int64_t k);

// gemv_q8a (decode): y[r] = sum_k W[r, k] * x[k] for the rows r of groups [g_begin, g_end),
// r < w.rows.
//   w: a packed format (format_dispatch.h);  x [w.blocks] q8a blocks;  y indexed by row
//   (y[8 * g_begin] is the first written; rows >= w.rows are not written).
//   0 <= g_begin <= g_end <= w.groups.
//   Exact: per block the integer dot is exact, and the float combination uses ref's operations
//   in ref's order (per term one fused multiply-add into the row's sum of the rounded factor
//   scale * activation scale times the dot; a minimum times the block's scaled sum
//   d * float(sum), rounded once), accumulated over blocks in block order, per row; so every
//   table returns ref's bits.
using GemvQ8aFn = void(const PackedMatrix& w, const BlockQ8A* x, float* y, int64_t g_begin,
                       int64_t g_end);

// gemm_q8a (prefill): Y[t, r] = sum_k W[r, k] * X[t, k] for t < m and the rows of groups
// [g_begin, g_end) (rows >= w.rows not written).
//   x [m, w.blocks] q8a blocks, contiguous;  y: row t at y + t * ldy.  m >= 1.
//   Exact, with gemv_q8a's per-element arithmetic.
using GemmQ8aFn = void(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
                       int64_t g_begin, int64_t g_end);

// dequantize_row: row r of a packed matrix as floats (embedding lookup, tests).
//   out [w.k];  0 <= r < w.rows.
//   Exact: the float32 formula of docs/weight-formats.md, so every table returns ref's bits.
using DequantizeRowFn = void(const PackedMatrix& w, int64_t r, float* out);

// ==== vec: conversions, normalization, elementwise (vec_<tag>.cc) =============================

// cvt_f16_f32 (IEEE half input), cvt_bf16_f32 (bfloat16 input): out[i] = float(in[i]).
//   in, out [n]. Exact; a NaN stays a NaN (hardware conversions may set its quiet bit).
using CvtHalfToF32Fn = void(const uint16_t* in, float* out, int64_t n);
// cvt_f32_f16: out[i] = IEEE half of in[i], round to nearest even, overflow to inf, NaN stays
// NaN (the F16C vcvtps2ph rounding); stores the KV cache.
//   in, out [n]. Exact.
using CvtF32ToF16Fn = void(const float* in, uint16_t* out, int64_t n);

// rms_norm: y[r, i] = x[r, i] * (1 / sqrt(mean_i x[r, i]^2 + eps)) * w[i].
//   x, y [rows, n] (y == x allowed);  w [n] (the zero-centred norms pass 1 + w, formed at
//   load). Reordered sum of squares: relative error within 1e-6 * sqrt(n).
using RmsNormFn = void(const float* x, const float* w, float* y, int64_t rows, int64_t n,
                       float eps);

// rms_norm_gated, the GDN output norm (docs/model.md §4.4):
// y = w * (x / sqrt(mean x^2 + eps)) * silu(z), per row.
//   x, z, y [rows, n] (y may alias x or z);  w [n]. Reordered + approx (silu).
using RmsNormGatedFn = void(const float* x, const float* w, const float* z, float* y, int64_t rows,
                            int64_t n, float eps);

// l2_norm: y[r, i] = x[r, i] * (1 / sqrt(sum_i x[r, i]^2 + eps)) * scale.
//   x, y [rows, n] with row stride ld (y == x allowed). Reordered, as rms_norm.
using L2NormFn = void(const float* x, float* y, int64_t rows, int64_t n, int64_t ld, float eps,
                      float scale);

// rope: rotate-half RoPE in place on the first 2 * half dims of the n_heads vectors x + h * ld:
// (a, b) = (x[f], x[f + half]) -> (a * cos[f] - b * sin[f], b * cos[f] + a * sin[f]), f < half.
//   cos, sin [half] for this position. Exact (separately rounded products, as ref).
using RopeFn = void(float* x, int64_t n_heads, int64_t ld, const float* cos, const float* sin,
                    int64_t half);

// softmax: in place, x[i] = exp(x[i] - max) / sum.  x [n], n >= 1. Approx exp, reordered sum.
using SoftmaxFn = void(float* x, int64_t n);

// silu_mul (SwiGLU): out[i] = silu(a[i]) * b[i] = a / (1 + exp(-a)) * b. out may alias a or b.
// Approx.
using SiluMulFn = void(const float* a, const float* b, float* out, int64_t n);
// sigmoid_mul (attention output gate): out[i] = x[i] * sigmoid(g[i]). out may alias x or g.
// Approx.
using SigmoidMulFn = void(const float* x, const float* g, float* out, int64_t n);

// ==== delta: Gated DeltaNet (delta_<tag>.cc) ==================================================

// conv1d_silu: causal depthwise conv1d with SiLU over t tokens of c channels, kernel width kw
// (docs/model.md §4.8 step 2): y[s, ch] = silu(sum_j w[j, ch] * in[s - kw + 1 + j, ch]), where
// `in` is the kw - 1 rows of `state` followed by the t rows of x; afterwards state holds the
// last kw - 1 input rows.
//   w [kw, c] (tap-major: the file's [c, 1, kw] transposed at load) and state [kw - 1, c],
//   both with row stride ldc >= c, so a caller can give each thread a slice of channels;
//   x [t, c] row stride ldx;  y [t, c] row stride ldy, must not alias x.
//   Taps summed in order j = 0..kw-1 with separately rounded products: exact but for the silu
//   (approx).
using Conv1dSiluFn = void(const float* w, float* state, int64_t ldc, const float* x, int64_t ldx,
                          float* y, int64_t ldy, int64_t t, int64_t c, int64_t kw);

// delta_rule: the gated delta rule of one value head over t tokens (docs/model.md §4.8 step 7,
// the recurrence):
//   S = decay[s] * S;  e = S^T k;  delta = beta[s] * (v - e);  S += k delta^T;  o = S^T q
//   s [dk, dv] fp32, updated in place;  q, k: token s at q + s * ldu, k + s * ldu ([dk],
//   l2-normalized, q scaled by 1/sqrt(dk));  v: token s at v + s * ldu ([dv]);
//   decay (= exp(g)), beta: token s at decay[s * ldg], beta[s * ldg];  o: token s at
//   o + s * ldo ([dv]).
//   Reordered: sums over dk in ISA order; state and outputs within 1e-5 relative of ref per
//   step.
using DeltaRuleFn = void(float* s, const float* q, const float* k, const float* v, int64_t ldu,
                         const float* decay, const float* beta, int64_t ldg, float* o, int64_t ldo,
                         int64_t t, int64_t dk, int64_t dv);

// ==== attention: one KV head of the cache (attention_<tag>.cc) ================================

// attention_f16 (the default f16 cache), attention_f32: causal softmax attention of n_t
// consecutive tokens, n_q query vectors each, over the first positions of one KV head; token r
// (0 <= r < n_t) sees the first n_r = n - (n_t - 1 - r) positions (the last token sees all n):
//   out[r][i] = sum_j p_rij v[j],  p_ri = softmax_j(scale * q[r][i] . k[j]),  j < n_r.
//   q [n_t, n_q, d]: token stride ldqt, query stride ldq;  out [n_t, n_q, d]: ldot, ldo;
//   k, v [n, d], rows contiguous;  1 <= n_t <= n.
//   Streaming: positions go in tiles of kAttentionTile with an online softmax (running max and
//   sum per query, out rescaled when the max grows, divided by the sum at the end), so
//   scratch is attention_scratch(n_t * n_q, n) = n_t * n_q * min(n, kAttentionTile) floats,
//   whatever the context. Several tokens per call let a kernel read each K/V tile once for all
//   of them (prefill); decode is n_t = 1.
//   Reordered + approx exp, and per query independent of its company: out[r][i] is bit for bit
//   what a call with n_t = 1 (and any n_q) on the first n_r positions gives on the same table,
//   so how a prefill is cut into chunks and work items cannot change a logit.
inline constexpr int64_t kAttentionTile = 256;
inline constexpr int64_t attention_scratch(int64_t n_q, int64_t n) {
    return n_q * (n < kAttentionTile ? n : kAttentionTile);
}
using AttentionF16Fn = void(const float* q, int64_t ldq, int64_t ldqt, int64_t n_q, int64_t n_t,
                            const uint16_t* k, const uint16_t* v, int64_t n, int64_t d, float scale,
                            float* scratch, float* out, int64_t ldo, int64_t ldot);
using AttentionF32Fn = void(const float* q, int64_t ldq, int64_t ldqt, int64_t n_q, int64_t n_t,
                            const float* k, const float* v, int64_t n, int64_t d, float scale,
                            float* scratch, float* out, int64_t ldo, int64_t ldot);
// attention_q8, over the int8 cache (the long-context option), d a multiple of 32: keys and
// values in groups of 16 positions (formats.h: KeyGroupQ8, ValueGroupQ8, as store_key_q8 and
// store_value_q8 write them), kv_groups(n, d) whole groups each, whose positions past n a
// kernel may read but never uses. Scores
// are integer dot products: each query is rounded to int16 with one scale qs per row
// (quantize_row_q16), and scale * q . k[j] is scale * qs * sum_b dk_b (qc_b . kc_b), each
// block's products summed exactly in int32; the weighted sum is attention_f32's on the
// dequantized values, but on every SIMD table in integers too: per tile, query and value
// block b, the weights p_j * dv_jb (p_j = exp(score_j - running max) <= 1, dv_jb the block's
// scale) rounded to int16 against the bound W = max_j p_j * max_j dv_jb over the tile's
// positions, w_j = rint(p_j * dv_jb * kWeightOne / W), and out gets (W / kWeightOne) *
// sum_j w_j * codes_jb, the sum exact in int32 (256 * 32767 * 127 < 2^31). A weight's
// rounding moves a term by at most W * 127 / 65534: 1/258 of what the codes' own rounding
// can move the largest (W / 2). Reordered + approx exp, with the same independence (a
// query's codes and weights are its own).
inline constexpr int kWeightOne = 32767;
static_assert(kAttentionTile * kWeightOne * 127LL < (1LL << 31), "a tile's int32 sums overflow");
using AttentionQ8Fn = void(const float* q, int64_t ldq, int64_t ldqt, int64_t n_q, int64_t n_t,
                           const KeyGroupQ8* k, const ValueGroupQ8* v, int64_t n, int64_t d,
                           float scale, float* scratch, float* out, int64_t ldo, int64_t ldot);
// attention_q4, over the 4-bit cache (formats.h: KeyGroupQ4, ValueGroupQ4): attention_q8's
// arithmetic on the codes q = nibble - 8, but for the query, rounded to int8 per block of 32
// (quantize_block_q8: q8a's codes and scales, quantize_query_q4) instead of int16 per row, so
// that the nibbles meet it in byte dot products (4 products per 32-bit lane where int16 takes
// 2); a block's scale keeps its rounding at 1/254 of the block's largest element, small
// beside the keys' 1/14, where one scale per row in int8 would let a few large elements
// coarsen the rest (on the trained testbed both gave the int16 query's KL, docs/quality.md).
// scale * q . k[j] is scale * sum_b (dk_b * dq_b) (qc_b . kc_b), exact in int32 the same
// way (|q| <= 8). The SIMD tables take the offset per block: sum qc * q = sum qc * nibble -
// 8 * sum qc, with the codes' block sums from quantize_query_q4 (formats.h).
using AttentionQ4Fn = void(const float* q, int64_t ldq, int64_t ldqt, int64_t n_q, int64_t n_t,
                           const KeyGroupQ4* k, const ValueGroupQ4* v, int64_t n, int64_t d,
                           float scale, float* scratch, float* out, int64_t ldo, int64_t ldot);

// ==== which ISA implements what ===============================================================
// Each table implements a family or borrows the next-best table's kernels (dispatch.cc).

// clang-format off
#define QE_DECLARE_MATMUL(isa)                                                               \
    namespace isa {                                                                          \
    GemvF32Fn gemv_f32; GemmF32Fn gemm_f32; GemmHalfFn gemm_f16; GemmHalfFn gemm_bf16;       \
    QuantizeQ8aFn quantize_q8a; GemvQ8aFn gemv_q8a; GemmQ8aFn gemm_q8a;                      \
    DequantizeRowFn dequantize_row;                                                          \
    }
#define QE_DECLARE_VEC(isa)                                                                  \
    namespace isa {                                                                          \
    CvtHalfToF32Fn cvt_f16_f32; CvtHalfToF32Fn cvt_bf16_f32; CvtF32ToF16Fn cvt_f32_f16;      \
    RmsNormFn rms_norm; RmsNormGatedFn rms_norm_gated; L2NormFn l2_norm; RopeFn rope;        \
    SoftmaxFn softmax; SiluMulFn silu_mul; SigmoidMulFn sigmoid_mul;                         \
    }
#define QE_DECLARE_DELTA(isa)                                                                \
    namespace isa {                                                                          \
    Conv1dSiluFn conv1d_silu; DeltaRuleFn delta_rule;                                        \
    }
#define QE_DECLARE_ATTENTION(isa)                                                            \
    namespace isa {                                                                          \
    AttentionF16Fn attention_f16; AttentionF32Fn attention_f32; AttentionQ8Fn attention_q8;  \
    AttentionQ4Fn attention_q4;                                                              \
    }
#define QE_DECLARE_ALL(isa) \
    QE_DECLARE_MATMUL(isa) QE_DECLARE_VEC(isa) QE_DECLARE_DELTA(isa) QE_DECLARE_ATTENTION(isa)
// clang-format on

// ref: every kernel; and attention_q8 and attention_q4 with the weighted sum in integers, as
// the SIMD tables'.
QE_DECLARE_ALL(ref)
namespace ref {
AttentionQ8Fn attention_q8_integer_weights;
AttentionQ4Fn attention_q4_integer_weights;
}  // namespace ref

#if defined(__x86_64__) || defined(_M_X64)
// avx2 (+FMA, F16C): every kernel. avx_vnni: the packed products and attention; avx512_vnni:
// the packed products, the delta rule and attention.
QE_DECLARE_ALL(avx2)
namespace avx_vnni {
GemvQ8aFn gemv_q8a;
GemmQ8aFn gemm_q8a;
AttentionF16Fn attention_f16;
AttentionF32Fn attention_f32;
AttentionQ8Fn attention_q8;
AttentionQ4Fn attention_q4;
}  // namespace avx_vnni
namespace avx512_vnni {
GemvQ8aFn gemv_q8a;
GemmQ8aFn gemm_q8a;
DeltaRuleFn delta_rule;
AttentionF16Fn attention_f16;
AttentionF32Fn attention_f32;
AttentionQ8Fn attention_q8;
AttentionQ4Fn attention_q4;
}  // namespace avx512_vnni
#endif

#if defined(__aarch64__)
// neon: every kernel. neon_dotprod: the packed products and attention over the 4-bit cache;
// neon_i8mm: the prefill product.
QE_DECLARE_ALL(neon)
namespace neon_dotprod {
GemvQ8aFn gemv_q8a;
GemmQ8aFn gemm_q8a;
AttentionQ4Fn attention_q4;
}  // namespace neon_dotprod
namespace neon_i8mm {
GemmQ8aFn gemm_q8a;
}  // namespace neon_i8mm
#endif

#undef QE_DECLARE_MATMUL
#undef QE_DECLARE_VEC
#undef QE_DECLARE_DELTA
#undef QE_DECLARE_ATTENTION
#undef QE_DECLARE_ALL

}  // namespace qe
