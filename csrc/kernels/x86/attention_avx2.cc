// SPDX-License-Identifier: Apache-2.0
// AVX2 + FMA + F16C attention over one KV head: attention_inl.h on 8-lane vectors (runs of up
// to 12 query rows sharing each K/V load). Compiled with -mavx2 -mfma -mf16c (per file).
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/x86/avx2_inl.h"

namespace qe::avx2 {

#define QE_ATTENTION_LANES 8
#include "kernels/x86/attention_inl.h"

}  // namespace qe::avx2
