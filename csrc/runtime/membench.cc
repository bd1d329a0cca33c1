// SPDX-License-Identifier: Apache-2.0
#include "runtime/membench.h"

#include <chrono>
#include <cstdint>
#include <vector>

#include "runtime/buffer.h"
#include "runtime/thread_pool.h"

namespace qe {

double read_bandwidth_gbs(size_t bytes, int threads, int repetitions) {
    const size_t words = bytes / sizeof(uint64_t);
    Buffer buf(words * sizeof(uint64_t));
    uint64_t* data = buf.as<uint64_t>();
    for (size_t i = 0; i < words; ++i) data[i] = i;  // fault the pages in before timing
    ThreadPool pool(ThreadPool::Options{threads, false, 100});
    std::vector<uint64_t> sums(size_t(threads) * 8);  // one cache line per thread
    double best = 1e30;
    for (int r = 0; r < repetitions; ++r) {
        const auto start = std::chrono::steady_clock::now();
        pool.run([&](int thread, int n) {
            int64_t begin, end;
            ThreadPool::split(int64_t(words), thread, n, &begin, &end);
            // Four independent sums so the loop is load-bound, not add-latency-bound.
            uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            int64_t i = begin;
            for (; i + 4 <= end; i += 4) {
                s0 += data[i];
                s1 += data[i + 1];
                s2 += data[i + 2];
                s3 += data[i + 3];
            }
            for (; i < end; ++i) s0 += data[i];
            sums[size_t(thread) * 8] = s0 + s1 + s2 + s3;
        });
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (s < best) best = s;
    }
    volatile uint64_t sink = 0;
    for (uint64_t v : sums) sink = sink + v;  // keep the sums observable
    return double(words * sizeof(uint64_t)) / best / 1e9;
}

}  // namespace qe
