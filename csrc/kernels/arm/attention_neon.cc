// SPDX-License-Identifier: Apache-2.0
// NEON attention over one KV head (attention_neon_inl.h), ARMv8.0: every cache.
#include <arm_neon.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/arm/neon_inl.h"

namespace qe::neon {

#include "kernels/arm/attention_neon_inl.h"
#include "kernels/attention_entries_inl.h"

}  // namespace qe::neon
