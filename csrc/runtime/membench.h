// SPDX-License-Identifier: Apache-2.0
// This machine's streaming read bandwidth, measured the way decode reads weights: each of
// `threads` threads of a ThreadPool streams its own contiguous part of one buffer far larger
// than the caches. `qwen-edge bench` reports decode bandwidth as a fraction of it.
#pragma once

#include <cstddef>

namespace qe {

// Best of `repetitions` passes over a fresh buffer of `bytes` (touched once before timing),
// in GB/s (1e9 bytes per second).
double read_bandwidth_gbs(size_t bytes, int threads, int repetitions);

}  // namespace qe
