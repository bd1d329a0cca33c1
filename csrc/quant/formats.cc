// SPDX-License-Identifier: Apache-2.0
#include "quant/formats.h"

#include <cmath>
#include <cstring>
#include <vector>

namespace qe {
namespace {

constexpr struct {
    WeightFormat format;
    const char* name;
} kNames[] = {
    {WeightFormat::kF32, "f32"},       {WeightFormat::kF16, "f16"},
    {WeightFormat::kBf16, "bf16"},     {WeightFormat::kQ8g32, "q8g32"},
    {WeightFormat::kQ4g32, "q4g32"},   {WeightFormat::kQ4ag32, "q4ag32"},
    {WeightFormat::kQ4k, "q4k"},       {WeightFormat::kQ6k, "q6k"},
};

uint64_t align_up(uint64_t n) { return (n + kSectionAlign - 1) / kSectionAlign * kSectionAlign; }

}  // namespace

namespace {
// Symmetric codes of x [n]: s = amax / levels, q = round(x / s) (half away from zero) within
// +-levels; returns s. The definition of q8a, of the integer caches' blocks and of the query
// codes they are scored with.
template <typename T>
float quantize_symmetric(const float* x, T* q, int64_t n, float levels) {
    float amax = 0.0f;  // fmax drops NaN
    for (int64_t j = 0; j < n; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    const float s = amax / levels;
    const float inv = s != 0.0f ? 1.0f / s : 0.0f;
    for (int64_t j = 0; j < n; ++j) {
        // Clamp before rounding: the same result for finite values, and defined when 1/s
        // overflowed (a subnormal s) or x is NaN (fmax/fmin drop it: -levels).
        const float v = std::fmin(std::fmax(x[j] * inv, -levels), levels);
        q[j] = T(std::lround(v));
    }
    return s;
}
}  // namespace

float quantize_block_q8(const float* x, int8_t* q) {
    return quantize_symmetric(x, q, kBlockK, 127.0f);
}

float quantize_block_q4(const float* x, int8_t* q) {
    return quantize_symmetric(x, q, kBlockK, 7.0f);
}

float quantize_row_q16(const float* x, int16_t* q, int64_t n) {
    return quantize_symmetric(x, q, n, 32767.0f);
}

void quantize_query_q4(const float* x, int64_t d, int8_t* codes, float* scales, int32_t* sums) {
    for (int64_t b = 0; b < d / kBlockK; ++b) {
        scales[b] = quantize_block_q8(x + b * kBlockK, codes + b * kBlockK);
        int32_t sum = 0;
        for (int e = 0; e < kBlockK; ++e) sum += codes[b * kBlockK + e];
        sums[b] = sum;
    }
}

void store_key_q8(const float* x, KeyGroupQ8* groups, int64_t j, int64_t d) {
    const int64_t nb = d / kBlockK, l = j % kKvGroup;
    KeyGroupQ8* g = groups + j / kKvGroup * nb;
    for (int64_t b = 0; b < nb; ++b) {
        int8_t q[kBlockK];
        g[b].d[l] = quantize_block_q8(x + b * kBlockK, q);
        for (int p = 0; p < kBlockK / 2; ++p) {
            g[b].q[p][l][0] = q[2 * p];
            g[b].q[p][l][1] = q[2 * p + 1];
        }
    }
}

void store_value_q8(const float* x, ValueGroupQ8* groups, int64_t j, int64_t d) {
    const int64_t nb = d / kBlockK, l = j % kKvGroup;
    ValueGroupQ8* g = groups + j / kKvGroup * nb;
    for (int64_t b = 0; b < nb; ++b) g[b].d[l] = quantize_block_q8(x + b * kBlockK, g[b].q[l]);
}

void store_key_q4(const float* x, KeyGroupQ4* groups, int64_t j, int64_t d) {
    const int64_t nb = d / kBlockK, l = j % kKvGroup;
    KeyGroupQ4* g = groups + j / kKvGroup * nb;
    for (int64_t b = 0; b < nb; ++b) {
        int8_t q[kBlockK];
        g[b].d[l] = quantize_block_q4(x + b * kBlockK, q);
        for (int p = 0; p < kBlockK / 4; ++p) {
            for (int i = 0; i < 2; ++i)
                g[b].q[p][l][i] = uint8_t((q[4 * p + i] + 8) | (q[4 * p + i + 2] + 8) << 4);
        }
    }
}

void store_value_q4(const float* x, ValueGroupQ4* groups, int64_t j, int64_t d) {
    const int64_t nb = d / kBlockK, l = j % kKvGroup;
    ValueGroupQ4* g = groups + j / kKvGroup * nb;
    for (int64_t b = 0; b < nb; ++b) {
        int8_t q[kBlockK];
        g[b].d[l] = quantize_block_q4(x + b * kBlockK, q);
        for (int e = 0; e < kBlockK / 2; ++e)
            g[b].q[l][e] = uint8_t((q[e] + 8) | (q[e + kBlockK / 2] + 8) << 4);
    }
}

namespace {
template <typename Group, typename Store>
void quantize_rows(const float* x, Group* groups, int64_t n, int64_t d, Store store) {
    const int64_t whole = (n + kKvGroup - 1) / kKvGroup * kKvGroup;
    const std::vector<float> zeros(size_t(d), 0.0f);
    for (int64_t j = 0; j < whole; ++j) store(j < n ? x + j * d : zeros.data(), groups, j, d);
}
}  // namespace

void quantize_keys_q8(const float* x, KeyGroupQ8* groups, int64_t n, int64_t d) {
    quantize_rows(x, groups, n, d, store_key_q8);
}

void quantize_values_q8(const float* x, ValueGroupQ8* groups, int64_t n, int64_t d) {
    quantize_rows(x, groups, n, d, store_value_q8);
}

void quantize_keys_q4(const float* x, KeyGroupQ4* groups, int64_t n, int64_t d) {
    quantize_rows(x, groups, n, d, store_key_q4);
}

void quantize_values_q4(const float* x, ValueGroupQ4* groups, int64_t n, int64_t d) {
    quantize_rows(x, groups, n, d, store_value_q4);
}

const char* format_name(WeightFormat f) {
    for (const auto& entry : kNames) {
        if (entry.format == f) return entry.name;
    }
    return "?";
}

bool parse_format(const std::string& name, WeightFormat* out) {
    for (const auto& entry : kNames) {
        if (name == entry.name) {
            *out = entry.format;
            return true;
        }
    }
    return false;
}

bool packed_layout(WeightFormat f, int64_t rows, int64_t k, PackedLayout* out) {
    if (!is_quantized(f) || rows <= 0 || k <= 0 || k % kBlockK != 0) return false;
    // Bound the dims so every product below fits comfortably in 64 bits.
    if (rows > (int64_t{1} << 31) || k > (int64_t{1} << 31)) return false;
    PackedLayout l;
    l.rows = rows;
    l.rows_padded = (rows + kRowPack - 1) / kRowPack * kRowPack;
    l.k = k;
    l.groups = l.rows_padded / kRowPack;
    l.blocks = k / kBlockK;
    const uint64_t records = uint64_t(l.groups) * uint64_t(l.blocks);
    uint64_t offset = align_up(records * quant_record_bytes(f));
    l.scales_offset = offset;
    offset += align_up(records * scale_record_bytes(f));
    if (row_param_bytes(f) != 0) {
        l.row_params_offset = offset;
        offset += align_up(uint64_t(l.groups) * row_param_bytes(f));
    }
    l.total_bytes = offset;
    *out = l;
    return true;
}

bool plain_bytes(WeightFormat f, uint64_t numel, uint64_t* out) {
    uint64_t itemsize = 0;
    switch (f) {
        case WeightFormat::kF32: itemsize = 4; break;
        case WeightFormat::kF16:
        case WeightFormat::kBf16: itemsize = 2; break;
        default: return false;
    }
    return !mul_overflows(numel, itemsize, out);
}

PackedMatrix PackedMatrix::view(WeightFormat f, const PackedLayout& layout, const uint8_t* data) {
    PackedMatrix m;
    m.format = f;
    m.rows = layout.rows;
    m.rows_padded = layout.rows_padded;
    m.k = layout.k;
    m.groups = layout.groups;
    m.blocks = layout.blocks;
    m.quants = data;
    m.scales = data + layout.scales_offset;
    m.row_params = row_param_bytes(f) != 0
                       ? reinterpret_cast<const float*>(data + layout.row_params_offset)
                       : nullptr;
    return m;
}

float f16_to_f32(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);  // inf / nan
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;  // signed zero
    } else {          // subnormal half: normalise
        int e = -1;
        do {
            mant <<= 1;
            ++e;
        } while (!(mant & 0x400));
        bits = sign | uint32_t(112 - e) << 23 | ((mant & 0x3ff) << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

}  // namespace qe
