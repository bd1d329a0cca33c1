// SPDX-License-Identifier: Apache-2.0
#include "runtime/thread_pool.h"

#include <chrono>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define QE_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define QE_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define QE_CPU_RELAX() ((void)0)
#endif

#include "common.h"

namespace qe {
namespace {

// Pins the calling thread to the `index`-th CPU of the process's allowed set (best effort).
void pin_current_thread(int index) {
#if defined(__linux__)
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return;
    int seen = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
        if (!CPU_ISSET(cpu, &allowed)) continue;
        if (seen++ == index) {
            cpu_set_t one;
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            pthread_setaffinity_np(pthread_self(), sizeof one, &one);
            return;
        }
    }
#else
    (void)index;
#endif
}

}  // namespace

ThreadPool::ThreadPool(const Options& options)
    : n_threads_(options.threads), spin_us_(options.spin_us < 0 ? 0 : options.spin_us) {
    QE_CHECK(options.threads >= 1 && options.threads <= 1024, "threads must be in 1..1024, got ",
             options.threads);
    active_.store(n_threads_);
    claimed_ = std::make_unique<std::atomic<uint64_t>[]>(n_threads_);
    for (int i = 0; i < n_threads_; ++i) claimed_[i].store(0);
    if (options.pin) pin_current_thread(0);
    workers_.reserve(n_threads_ - 1);
    for (int i = 1; i < n_threads_; ++i) {
        workers_.emplace_back([this, i, pin = options.pin] {
            if (pin) pin_current_thread(i);
            worker_main(i);
        });
    }
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_.store(true);
        generation_.fetch_add(1);
    }
    wake_.notify_all();
    parked_.notify_all();
    for (auto& t : workers_) t.join();
}

void ThreadPool::set_active(int n) {
    n = n < 1 ? 1 : n > n_threads_ ? n_threads_ : n;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        active_.store(n);
    }
    parked_.notify_all();
}

bool ThreadPool::claim(int i, uint64_t gen) {
    uint64_t seen = claimed_[i].load(std::memory_order_seq_cst);
    while (seen < gen) {
        if (claimed_[i].compare_exchange_weak(seen, gen, std::memory_order_seq_cst)) return true;
    }
    return false;
}

void ThreadPool::dispatch(JobFn fn, void* ctx, int n_active) {
    job_fn_ = fn;
    job_ctx_ = ctx;
    job_threads_ = n_active;
    const uint64_t gen = generation_.fetch_add(1, std::memory_order_seq_cst) + 1;  // publishes
    // A worker that is about to sleep increments sleepers_ before re-checking the generation
    // under the mutex, so either it sees the new job or we see it and wake it.
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
        }
        wake_.notify_all();
    }
    claim(0, gen);
    fn(ctx, 0, n_active);
    // Shares no worker has started: run them here rather than wait for a thread the OS may
    // not schedule soon. The shares of inactive threads are claimed too (and not run), so no
    // late worker can take a share of a job that has already returned.
    for (int i = 1; i < n_threads_; ++i) {
        if (claim(i, gen) && i < n_active) fn(ctx, i, n_active);
    }
    // Every share is claimed now; wait for those in progress (normally already done).
    for (int spins = 0; running_.load(std::memory_order_seq_cst) != 0; ++spins) {
        if (spins < 1 << 12) {
            QE_CPU_RELAX();
        } else {
            std::this_thread::yield();  // a worker was preempted inside its share
        }
    }
}

void ThreadPool::worker_main(int thread) {
    using Clock = std::chrono::steady_clock;
    uint64_t seen = 0;
    for (;;) {
        if (thread >= active_.load(std::memory_order_acquire)) {
            // Inactive: sleep until set_active includes us; jobs meanwhile are not ours.
            std::unique_lock<std::mutex> lock(mutex_);
            while (thread >= active_.load(std::memory_order_seq_cst) && !stop_.load()) {
                parked_.wait(lock);
            }
            if (stop_.load(std::memory_order_acquire)) return;
            seen = generation_.load(std::memory_order_seq_cst);
            continue;
        }
        // Wait for a new generation: spin briefly, then sleep.
        uint64_t gen = generation_.load(std::memory_order_acquire);
        if (gen == seen && spin_us_ > 0) {
            const auto until = Clock::now() + std::chrono::microseconds(spin_us_);
            for (int i = 0; (gen = generation_.load(std::memory_order_acquire)) == seen; ++i) {
                QE_CPU_RELAX();
                if ((i & 255) == 255 && Clock::now() > until) break;
            }
        }
        if (gen == seen) {
            std::unique_lock<std::mutex> lock(mutex_);
            sleepers_.fetch_add(1, std::memory_order_seq_cst);
            while ((gen = generation_.load(std::memory_order_seq_cst)) == seen) wake_.wait(lock);
            sleepers_.fetch_sub(1, std::memory_order_relaxed);
        }
        seen = gen;
        if (stop_.load(std::memory_order_acquire)) return;
        // Registered before claiming: whenever our claim can still succeed, the caller (which
        // claims every free share before waiting) sees us running and waits.
        running_.fetch_add(1, std::memory_order_seq_cst);
        if (claim(thread, gen) && thread < job_threads_) job_fn_(job_ctx_, thread, job_threads_);
        running_.fetch_sub(1, std::memory_order_seq_cst);
    }
}

}  // namespace qe
