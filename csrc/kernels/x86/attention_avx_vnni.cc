// SPDX-License-Identifier: Apache-2.0
// AVX-VNNI attention over one KV head: attention_inl.h on 8-lane vectors, as the avx2 file,
// but the int8 cache's integer sums (scores and weighted sum) take one vpdpwssd where avx2
// takes a vpmaddwd and an add. Compiled with -mavx2 -mfma -mf16c -mavxvnni (per file).
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/x86/avx2_inl.h"

namespace qe::avx_vnni {

#define QE_ATTENTION_LANES 8
#define QE_ATTENTION_AVX_VNNI
#include "kernels/x86/attention_inl.h"

}  // namespace qe::avx_vnni
