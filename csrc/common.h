// SPDX-License-Identifier: Apache-2.0
// Shared basics of the native core: the error type every layer throws (bindings map it to
// Python), checked-arithmetic helpers for untrusted sizes, and portability macros.
#pragma once

#include <cstddef>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

#if defined(__GNUC__) || defined(__clang__)
#define QE_RESTRICT __restrict__
#define QE_LIKELY(x) __builtin_expect(!!(x), 1)
#define QE_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define QE_ALWAYS_INLINE __attribute__((always_inline))
#else
#define QE_RESTRICT
#define QE_LIKELY(x) (x)
#define QE_UNLIKELY(x) (x)
#define QE_ALWAYS_INLINE
#endif

namespace qe {

// Every failure the core reports: a bad model file, a bad argument, an unsupported CPU.
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// A forward pass whose tokens do not fit the state's context length (Python:
// qwen_edge.errors.ContextLengthError). The state is left unchanged.
class ContextLengthError : public Error {
public:
    using Error::Error;
};

// A forward pass stopped between two layers because its caller asked (Ctrl-C, the interpreter
// exiting). The state it ran on is left marked interrupted until it is reset or copied over.
class Interrupted : public Error {
public:
    using Error::Error;
};

namespace detail {
template <typename... Args>
[[noreturn]] void fail(const char* file, int line, Args&&... args) {
    std::ostringstream os;
    (os << ... << args);
    (void)file;
    (void)line;
    throw Error(os.str());
}
}  // namespace detail

// Checks a condition that depends on input (files, arguments); throws qe::Error with a message.
#define QE_CHECK(cond, ...)                                                            \
    do {                                                                               \
        if (QE_UNLIKELY(!(cond))) ::qe::detail::fail(__FILE__, __LINE__, __VA_ARGS__); \
    } while (0)

// Checks an internal invariant in debug builds only.
#ifdef NDEBUG
#define QE_DCHECK(cond) ((void)0)
#else
#define QE_DCHECK(cond) QE_CHECK(cond, "internal check failed: " #cond)
#endif

// a + b and a * b for sizes read from files: false on overflow instead of wrapping.
inline bool add_overflows(uint64_t a, uint64_t b, uint64_t* out) {
    return __builtin_add_overflow(a, b, out);
}
inline bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) {
    return __builtin_mul_overflow(a, b, out);
}

}  // namespace qe
