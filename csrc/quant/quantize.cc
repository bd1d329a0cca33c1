// SPDX-License-Identifier: Apache-2.0
#include "quant/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace qe {

uint16_t f32_to_f16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, sizeof x);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to infinity (>= 65520)
    if (ax < 0x38800000u) {                                  // below 2^-14: a subnormal half
        if (ax <= 0x33000000u) return uint16_t(sign);        // <= 2^-25: ties to even zero
        const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126u - e;  // 14..24: the half's unit is 2^-24
        uint32_t q = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) ++q;
        return uint16_t(sign | q);
    }
    uint32_t h = (((ax >> 23) - 112u) << 10) | ((ax & 0x7fffffu) >> 13);
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry moves into the exponent
    return uint16_t(sign | h);
}

namespace {
#define QE_QUANT_LANES 2
#include "quant/quantize_inl.h"
}  // namespace

#if defined(QE_QUANT_AVX2)
namespace avx2 {  // quantize_avx2.cc: the same code with four lanes under -mavx2
bool quantize_row_groups(WeightFormat f, const PackedLayout& layout, const float* x,
                         int64_t row0, int64_t n_rows, int64_t g_begin, int64_t g_end,
                         uint8_t* out, const float* importance);
}  // namespace avx2
#endif

const char* const* quantizer_isas(int* count) {
#if defined(QE_QUANT_AVX2)
    static const char* const with_avx2[] = {"avx2", "base"};
    if (__builtin_cpu_supports("avx2")) {
        *count = 2;
        return with_avx2;
    }
#endif
    static const char* const base[] = {"base"};
    *count = 1;
    return base;
}

bool quantize_row_groups(WeightFormat f, const PackedLayout& layout, const float* x,
                         int64_t row0, int64_t n_rows, int64_t g_begin, int64_t g_end,
                         uint8_t* out, const char* isa, const float* importance) {
    if (!is_quantized(f) || row0 % kRowPack != 0) return false;
    int n = 0;
    const char* const* isas = quantizer_isas(&n);
    const std::string want = isa && *isa ? isa : isas[0];
    if (want == "base")
        return quantize_row_groups_impl(f, layout, x, row0, n_rows, g_begin, g_end, out,
                                        importance);
#if defined(QE_QUANT_AVX2)
    if (want == "avx2" && n == 2)
        return avx2::quantize_row_groups(f, layout, x, row0, n_rows, g_begin, g_end, out,
                                         importance);
#endif
    return false;
}

}  // namespace qe
