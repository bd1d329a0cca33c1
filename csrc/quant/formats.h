// SPDX-License-Identifier: Apache-2.0
// Weight and activation formats: the binary ABI shared by the model file, the exporter
// (qwen_edge/quant.py mirrors every constant here) and the kernels. docs/weight-formats.md
// describes the bit layouts; this header is their single C++ definition.
#pragma once

#include <cstdint>
#include <string>

#include "common.h"

namespace qe {

// Format names, the strings of the model file, Python and bench JSON (format_name; they are part
// of the file format and never change), read letter by letter:
//   f32 f16 bf16   plain floats
//   q<bits>        integer codes of that many bits, with a float scale
//   a              (in a weight format, after the bits) asymmetric: each block also has a
//                  minimum, value = d * code + m (q4ag32); without it, symmetric codes around a
//                  fixed zero point (q8g32: 128, q4g32: 8, q6k: 32)
//   g<N>           one scale per group of N columns along k (g32: per 32-column block)
//   k              k-quant layout (after llama.cpp's Q4_K/Q6_K): integer sub-scales per block
//                  and float factors per row; q4k also has a minimum (d * sc * q - m * mn)
// The activation format q8a (BlockQ8A below) is not a weight format and its `a` is another
// word: activation. Its blocks are symmetric int8 (d * q, no minimum), made at run time and
// never stored.
enum class WeightFormat : uint8_t {
    kF32,
    kF16,
    kBf16,
    kQ8g32,   // int8 (offset binary u8 = q + 128), f16 scale per row and 32 columns: 8.5 b/w
    kQ4g32,   // 4-bit codes 0..15 meaning q - 8, f16 scale: 4.5 b/w
    kQ4ag32,  // 4-bit codes, f16 scale and f16 minimum: 5.0 b/w
    kQ4k,     // 4-bit codes, u8 scale and u8 min per block, f32 per-row factors: ~4.5 b/w
    kQ6k,     // 6-bit codes 0..63 meaning q - 32, i8 scale per block, f32 per-row factor: ~6.25 b/w
};

constexpr int kBlockK = 32;  // columns per quantization block
constexpr int kRowPack = 8;  // rows interleaved in one row group
constexpr int kStepK = 4;    // consecutive columns of one row kept together (one int32 lane)
constexpr int kSectionAlign = 64;

// Format name as used in the model file, Python and benchmark JSON ("q4k", "f16", ...).
const char* format_name(WeightFormat f);
// Parses a format name; false if unknown.
bool parse_format(const std::string& name, WeightFormat* out);
inline bool is_quantized(WeightFormat f) {
    return f >= WeightFormat::kQ8g32;
}

// Bytes of one quant record (8 rows x 32 columns) and one scale record of a packed format.
constexpr int64_t quant_record_bytes(WeightFormat f) {
    return f == WeightFormat::kQ8g32 ? 256 : f == WeightFormat::kQ6k ? 192 : 128;
}
constexpr int64_t scale_record_bytes(WeightFormat f) {
    return f == WeightFormat::kQ4ag32 ? 32 : f == WeightFormat::kQ6k ? 8 : 16;
}
// Bytes of one row-parameter record per row group: q4k float d[8], m[8]; q6k float d[8];
// 0 for the formats without row factors.
constexpr int64_t row_param_bytes(WeightFormat f) {
    return f == WeightFormat::kQ4k ? 64 : f == WeightFormat::kQ6k ? 32 : 0;
}
// Formats with a per-block minimum (q4ag32, q4k): in a product, its term is the minimum times
// the activation block's scaled sum d * float(sum) (kernels.h).
constexpr bool has_block_min(WeightFormat f) {
    return f == WeightFormat::kQ4ag32 || f == WeightFormat::kQ4k;
}
// q6k quant record: the 4-bit record of the low nibbles, then the high 2 bits of every code.
constexpr int64_t kQ6HighOffset = 128;

// Where the sections of a packed [rows, k] tensor start, relative to the tensor, and its size.
struct PackedLayout {
    int64_t rows = 0, rows_padded = 0, k = 0;
    int64_t groups = 0, blocks = 0;  // row groups of 8, blocks of 32 columns
    uint64_t scales_offset = 0, row_params_offset = 0, total_bytes = 0;
};
// Computes the layout; false (and no output) if k is not a multiple of 32, a dim is not
// positive, or the byte count would overflow.
bool packed_layout(WeightFormat f, int64_t rows, int64_t k, PackedLayout* out);

// Bytes of a plain tensor with `numel` elements; false on overflow.
bool plain_bytes(WeightFormat f, uint64_t numel, uint64_t* out);

// A packed matrix in memory (usually inside the model file's mmap).
struct PackedMatrix {
    WeightFormat format = WeightFormat::kQ4g32;
    int64_t rows = 0, rows_padded = 0, k = 0, groups = 0, blocks = 0;
    const uint8_t* quants = nullptr;  // [groups][blocks] quant records
    const uint8_t* scales = nullptr;  // [groups][blocks] scale records
    // q4k: [groups] {d[8], m[8]}; q6k: [groups] {d[8]}; else null
    const float* row_params = nullptr;

    // A view of a tensor's bytes (which must hold layout.total_bytes).
    static PackedMatrix view(WeightFormat f, const PackedLayout& layout, const uint8_t* data);
};

// q8a: one block of 32 quantized activations (runtime only; `a` = activation, not asymmetric):
// x ~= d * q, symmetric, and sum = sum of q.
struct BlockQ8A {
    float d;
    int32_t sum;
    int8_t q[kBlockK];
};
static_assert(sizeof(BlockQ8A) == 40, "BlockQ8A is part of the kernel ABI");

// q8kv: one block of 32 cached keys' or values' elements (runtime only, in a state's int8 KV
// cache): x ~= d * q, symmetric, the values of q8a (the same d and q) without its sum, which
// attention never reads. 36 bytes per 32 values instead of 40: a long-context decode step reads
// every block, and a 262k-token state is mostly blocks. The float scale after the codes is one
// broadcast load (a bf16 scale, 34 bytes as llama.cpp's q8_0, needs a mask too: a decode call
// from cache ran 7-10 % slower on x86 for its 6 % fewer bytes).
struct BlockQ8Kv {
    int8_t q[kBlockK];
    float d;
};
static_assert(sizeof(BlockQ8Kv) == 36, "BlockQ8Kv is part of the kernel ABI");

// q8k16: the int8 cache's keys, block b (32 elements) of 16 consecutive positions in one
// 576-byte piece ("key group"), codes transposed so that one vector load gives a column pair
// of every position: q[p][l] holds elements 2p and 2p + 1 of position l, d[l] its scale (the
// values and scales of q8kv). A head's keys are groups [j / 16][b], b < d / 32: the same 36
// bytes per 32 values as rows of q8kv blocks, allocated in whole groups. Scores go with
// positions along vector lanes; rows of blocks had each kernel call transpose every key it
// read (a fifth of an avx512 decode call at 16k), and gathered their scales 36 bytes apart.
inline constexpr int kKeyGroup = 16;
struct KeyGroupQ8 {
    int8_t q[kBlockK / 2][kKeyGroup][2];
    float d[kKeyGroup];
};
static_assert(sizeof(KeyGroupQ8) == kKeyGroup * sizeof(BlockQ8Kv), "KeyGroupQ8 is kernel ABI");

// One symmetric int8 block, the definition of q8a and q8kv: d = amax / 127, q = round(x / d)
// (half away from zero) within +-127; returns d.
float quantize_block_q8(const float* x, int8_t* q);

// A query row for integer dot products with an int8 cache: s = amax / 32767, q = round(x / s)
// (half away from zero) within +-32767; returns s. Scalar, the same codes on every table.
float quantize_row_q16(const float* x, int16_t* q, int64_t n);

// Quantizes x [k] (k a multiple of 32) into k / 32 blocks (quantize_block_q8 each): scalar, the
// same bytes on every CPU. A cache row is written once and read at every later step, so its
// speed hardly matters.
void quantize_q8kv(const float* x, BlockQ8Kv* out, int64_t k);

// Key x [d] (d a multiple of 32) as position j of a head's q8k16 keys `groups` (quantize_q8kv's
// codes and scales, transposed).
void store_key_q8(const float* x, KeyGroupQ8* groups, int64_t j, int64_t d);
// Keys k [n, d] as a head's first n positions into key_groups(n, d) groups, the rest of the
// last group zeroed.
inline int64_t key_groups(int64_t n, int64_t d) {
    return (n + kKeyGroup - 1) / kKeyGroup * (d / kBlockK);
}
void quantize_keys_q8(const float* k, KeyGroupQ8* groups, int64_t n, int64_t d);
// Element e of position j of a head's q8k16 keys, as float (d * code).
float key_q8_at(const KeyGroupQ8* groups, int64_t j, int64_t e, int64_t d);

// IEEE half and bfloat16 to float (exact).
float f16_to_f32(uint16_t h);
inline float bf16_to_f32(uint16_t h) {
    const uint32_t bits = uint32_t{h} << 16;
    float f;
    __builtin_memcpy(&f, &bits, sizeof f);
    return f;
}

}  // namespace qe
