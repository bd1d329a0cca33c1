// SPDX-License-Identifier: Apache-2.0
// The one run-time switch over packed weight formats, shared by every kernel table (ref, x86,
// arm). An entry point that serves several formats calls with_format once, and the kernel
// behind it is a template on the format: one instantiation per format, no per-block branching.
// Callers: gemv_q8a, gemm_q8a and dequantize_row of each table (kernels.h, matmul family).
//
// Formats covered, the packed formats of quant/formats.h (layouts in docs/weight-formats.md):
//   q8g32  q4g32  q4ag32  q4k  q6k
// Any other format (f32, f16, bf16) calls nothing: the op layer sends those to the float
// products and never here.
#pragma once

#include <type_traits>

#include "quant/formats.h"

namespace qe {

template <WeightFormat F>
using FormatTag = std::integral_constant<WeightFormat, F>;

// Calls fn(FormatTag<F>{}) with F == f, so `decltype(tag)::value` is the format as a constant:
//   with_format(w.format, [&](auto fmt) { kernel<decltype(fmt)::value>(...); });
// Internal linkage and forced inlining: each kernel file, compiled with its own ISA flags, keeps
// its own copy, and the switch sits in the entry point (STYLE.md §5). Where the kernel is an
// outlined function (the x86 files), the lambda is marked QE_ALWAYS_INLINE too, so the entry
// calls each format's kernel directly as a hand-written switch does; GCC otherwise inlines
// whole kernels into the outlined lambda (avx2 gemm_q8a: 531 -> 3605 instructions). Where the
// kernel is itself forced inline (the NEON files), the lambda is left to the compiler.
template <typename Fn>
static inline QE_ALWAYS_INLINE void with_format(WeightFormat f, Fn&& fn) {
    switch (f) {
        case WeightFormat::kQ8g32:
            fn(FormatTag<WeightFormat::kQ8g32>{});
            break;
        case WeightFormat::kQ4g32:
            fn(FormatTag<WeightFormat::kQ4g32>{});
            break;
        case WeightFormat::kQ4ag32:
            fn(FormatTag<WeightFormat::kQ4ag32>{});
            break;
        case WeightFormat::kQ4k:
            fn(FormatTag<WeightFormat::kQ4k>{});
            break;
        case WeightFormat::kQ6k:
            fn(FormatTag<WeightFormat::kQ6k>{});
            break;
        default:  // not a packed format
            break;
    }
}

}  // namespace qe
