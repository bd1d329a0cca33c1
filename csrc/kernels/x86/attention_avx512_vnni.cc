// SPDX-License-Identifier: Apache-2.0
// AVX-512 attention over one KV head: attention_inl.h on 16-lane vectors, half the FMAs of the
// avx2 kernel for the scores and the weighted sum (prefill at depth is bound by them). Compiled
// with the avx512_vnni table's flags (per file); it needs only AVX-512F (+F16C, AVX2 for exp).
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/x86/avx2_inl.h"

// GCC 12's own AVX-512 intrinsics (_mm512_undefined_* inside cvtph, cvtepi8, extract) trip
// -W(maybe-)uninitialized when inlined (GCC bug 105593), as in matmul_avx512_vnni.cc.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace qe::avx512_vnni {

#define QE_ATTENTION_LANES 16
#include "kernels/x86/attention_inl.h"

}  // namespace qe::avx512_vnni
