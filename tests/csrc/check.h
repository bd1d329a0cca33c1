// SPDX-License-Identifier: Apache-2.0
// A tiny test harness for the native test executable (no gtest: it must cross-build for aarch64
// and run under qemu with nothing else installed). Tests register themselves; main() runs them
// all, prints each failure with its values, and exits non-zero if any failed.
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace qe_test {

struct TestCase {
    const char* name;
    std::function<void()> fn;
};

inline std::vector<TestCase>& registry() {
    static std::vector<TestCase> tests;
    return tests;
}

inline int& failures() {
    static int n = 0;
    return n;
}

struct Register {
    Register(const char* name, std::function<void()> fn) { registry().push_back({name, fn}); }
};

}  // namespace qe_test

#define QE_TEST(name)                                                  \
    static void name();                                                \
    static ::qe_test::Register name##_registered(#name, name);         \
    static void name()

#define EXPECT_TRUE(cond)                                                               \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            std::printf("  FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);               \
            ++::qe_test::failures();                                                    \
        }                                                                               \
    } while (0)

// |a - b| <= atol + rtol * |b|, printed with both values on failure.
#define EXPECT_NEAR(a, b, atol, rtol)                                                          \
    do {                                                                                       \
        const double qa_ = (a), qb_ = (b);                                                     \
        if (!(std::fabs(qa_ - qb_) <= (atol) + (rtol) * std::fabs(qb_))) {                      \
            std::printf("  FAIL %s:%d: %s = %.9g vs %s = %.9g\n", __FILE__, __LINE__, #a, qa_, \
                        #b, qb_);                                                              \
            ++::qe_test::failures();                                                           \
        }                                                                                      \
    } while (0)
