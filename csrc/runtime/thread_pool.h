// SPDX-License-Identifier: Apache-2.0
// A fixed pool of worker threads for the forward pass. The calling thread is worker 0, so a
// pool of n threads starts n - 1 workers. `run(fn)` calls fn(thread, n_threads) once on every
// thread and returns when all are done: the op layer derives each thread's share from its index
// (a static split, so each thread streams its own row groups of every weight matrix, which is
// what a memory-bound decode wants), or takes chunks from an atomic counter (`for_each`) where
// the cost per item varies.
//
// Idle workers sleep on a condition variable: they never spin while the model is idle. After a
// job they may spin for `spin_us` microseconds first, because the next job of the same forward
// pass usually follows within microseconds and a futex wake-up costs more than that.
//
// `set_active(n)` lets only the first n threads work (the power governor lowers it to save
// energy): later jobs are split n ways, and the other workers sleep on their own condition
// variable, so they neither spin nor wake per job until they are active again.
//
// Each thread's share of a job is claimed before it runs (a per-share generation stamp). When
// the caller has finished its own share it claims and runs every share no worker has started,
// so it never waits for a worker the OS has not scheduled yet (a busy machine, a big.LITTLE
// core asleep): it only waits for shares actually in progress. Shares are defined by index,
// whoever runs them, so results do not change.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace qe {

class ThreadPool {
public:
    struct Options {
        int threads = 1;    // total threads including the caller, >= 1
        bool pin = false;   // pin thread i to the i-th CPU this process may run on
        int spin_us = 100;  // busy-wait this long for the next job before sleeping (0: never)
    };

    explicit ThreadPool(const Options& options);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // Threads that take part in the next jobs (1..size()).
    int active() const { return active_.load(std::memory_order_relaxed); }
    // Sets the active threads, clamped to 1..size(); takes effect from the next job.
    void set_active(int n);

    // Calls fn(thread, size()) on every thread, the caller being thread 0; returns when all
    // calls have returned. fn must not throw. Not reentrant: one job at a time per pool.
    template <typename Fn>
    void run(Fn&& fn) {
        const int n_active = active();
        if (n_active == 1) {
            fn(0, 1);
            return;
        }
        using F = std::remove_reference_t<Fn>;
        dispatch([](void* ctx, int thread, int n) { (*static_cast<F*>(ctx))(thread, n); },
                 const_cast<void*>(static_cast<const void*>(&fn)), n_active);
    }

    // Calls fn(begin, end, thread) on pieces covering [0, n), handed out `chunk` items at a time
    // through an atomic counter (dynamic balance for items of uneven cost); with one thread, one
    // piece. Which thread runs a piece varies: results must not depend on it (only scratch may).
    template <typename Fn>
    void for_each(int64_t n, int64_t chunk, Fn&& fn) {
        if (n <= 0) return;
        if (chunk < 1) chunk = 1;
        if (active() == 1 || n <= chunk) {
            fn(int64_t{0}, n, 0);
            return;
        }
        std::atomic<int64_t> next{0};
        run([&](int thread, int) {
            for (;;) {
                const int64_t begin = next.fetch_add(chunk, std::memory_order_relaxed);
                if (begin >= n) break;
                fn(begin, begin + chunk < n ? begin + chunk : n, thread);
            }
        });
    }

    // The share [begin, end) of n items that thread `thread` of n_threads gets in a static
    // split: contiguous, sizes differ by at most one.
    static void split(int64_t n, int thread, int n_threads, int64_t* begin, int64_t* end) {
        *begin = n * thread / n_threads;
        *end = n * (thread + 1) / n_threads;
    }

private:
    using JobFn = void (*)(void* ctx, int thread, int n_threads);
    void dispatch(JobFn fn, void* ctx, int n_active);
    void worker_main(int thread);

    int n_threads_;
    int spin_us_;
    std::vector<std::thread> workers_;

    // Claims share `i` of job `gen` for the calling thread; false if someone already has it.
    bool claim(int i, uint64_t gen);

    // The current job; published by incrementing generation_.
    JobFn job_fn_ = nullptr;
    void* job_ctx_ = nullptr;
    int job_threads_ = 1;  // threads the current job is split over
    std::atomic<uint64_t> generation_{0};
    std::unique_ptr<std::atomic<uint64_t>[]> claimed_;  // [threads] generation a share was taken
    std::atomic<int> running_{0};                       // workers inside a share of the current job
    std::atomic<int> sleepers_{0};
    std::atomic<bool> stop_{false};
    std::mutex mutex_;
    std::condition_variable wake_;
    std::atomic<int> active_{1};
    std::condition_variable parked_;  // workers at or above active_ wait here
};

}  // namespace qe
