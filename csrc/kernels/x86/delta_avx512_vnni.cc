// SPDX-License-Identifier: Apache-2.0
// AVX-512 gated delta rule: delta_rule_inl.h on 16-lane vectors, tiles of 4 vectors (64 columns).
// Compiled with the avx512_vnni table's flags (per file); it needs only AVX-512F.
#include <immintrin.h>

#include <cstring>

#include "kernels/kernels.h"

namespace qe::avx512_vnni {

#define QE_DELTA_LANES 16
#include "kernels/x86/delta_rule_inl.h"

}  // namespace qe::avx512_vnni
