// SPDX-License-Identifier: Apache-2.0
// The causal conv1d's rolling state, shared by every table's conv1d_silu: after t new input rows
// the state keeps the last kw - 1 rows of [state; x]. A plain copy, so every table gets ref's
// bits. `static inline`: each kernel file gets its own copy under its own ISA flags, so the
// linker can never hand an AVX2 or +dotprod build of it to a baseline caller (STYLE.md §5).
#pragma once

#include <cstdint>

namespace qe {

// state [kw - 1, c] with row stride ldc; x [t, c] with row stride ldx. Row r of the new state
// is row t + r of [state; x]; ascending r reads at or after the row it writes, so it works in
// place.
static inline void conv_state_roll(float* state, int64_t ldc, const float* x, int64_t ldx,
                                   int64_t t, int64_t c, int64_t kw) {
    const int64_t hist = kw - 1;
    for (int64_t r = 0; r < hist; ++r) {
        const int64_t src = t + r - hist;
        const float* from = src < 0 ? state + (hist + src) * ldc : x + src * ldx;
        float* to = state + r * ldc;
        if (from != to) {
            for (int64_t ch = 0; ch < c; ++ch) to[ch] = from[ch];
        }
    }
}

}  // namespace qe
