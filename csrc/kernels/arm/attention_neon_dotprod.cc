// SPDX-License-Identifier: Apache-2.0
// ARMv8.2 DotProd attention over the 4-bit cache (Cortex-A76 / Raspberry Pi 5, Cortex-A78AE /
// Jetson Orin, Cortex-A55): attention_neon_inl.h with the keys' scores in sdot, 16 products per
// instruction where smlal on bytes takes 8 and then needs widening adds. The other caches'
// attention is neon's (their queries are int16). Compiled with +dotprod (per file).
#include <arm_neon.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/arm/neon_inl.h"

namespace qe::neon_dotprod {

#define QE_ATTENTION_DOTPROD
#include "kernels/arm/attention_neon_inl.h"

void attention_q4(const float* q, int64_t ldq, int64_t ldqt, int64_t n_q, int64_t n_t,
                  const KeyGroupQ4* k, const ValueGroupQ4* v, int64_t n, int64_t d, float scale,
                  float* scratch, float* out, int64_t ldo, int64_t ldot) {
    attention(q, ldq, ldqt, n_q, n_t, k, v, n, d, scale, scratch, out, ldo, ldot);
}

}  // namespace qe::neon_dotprod
