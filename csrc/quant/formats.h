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

// The int8 KV cache (runtime only, in a state): each block of 32 elements of a cached key or
// value is q8a's d and codes (x ~= d * q, symmetric) without its sum, which attention never
// reads. The blocks of 16 consecutive positions share a 576-byte group, the codes first, then
// the 16 float scales: 36 bytes per 32 values (a long-context decode step reads every block,
// and a 262k-token state is mostly blocks; a bf16 scale, 34 bytes as llama.cpp's q8_0, ran a
// decode call from cache 7-10 % slower on x86 for its 6 % fewer bytes). A head's cache is
// groups [j / 16][b], b < d / 32, allocated whole. Kernels put positions along vector lanes:
// the scales of kLanes positions are one load, and keys (q8k16) keep each column pair of the
// 16 positions in 32 bytes, so one load and one widening give that pair for every position
// (keys stored as rows had each call transpose the 16 rows it read: a fifth of an avx512
// decode call at 16k). Values (q8v16) stay rows of 32 codes, weighed position by position.
inline constexpr int kKvGroup = 16;
struct KeyGroupQ8 {
    int8_t q[kBlockK / 2][kKvGroup][2];  // elements 2p, 2p + 1 of position l at q[p][l]
    float d[kKvGroup];
};
struct ValueGroupQ8 {
    int8_t q[kKvGroup][kBlockK];  // position l's codes at q[l]
    float d[kKvGroup];
};
static_assert(sizeof(KeyGroupQ8) == 576 && sizeof(ValueGroupQ8) == 576,
              "the int8 cache's groups are part of the kernel ABI");

// The 4-bit KV cache: the int8 cache's groups with 4-bit codes, 20 bytes per 32 values (0.56x),
// for contexts where the cache, not the weights, is what a decode step reads. A block's codes
// are symmetric, d = amax / 7 and q = round(x / d) within +-7 (quantize_block_q4), stored as
// q + 8 in a nibble; the scales stay floats, so both caches weigh and scale alike. Keys
// (q4k16x4): the 16 bits q[p][l] hold the quad of elements 4p .. 4p + 3 of position l, byte i
// (< 2) element 4p + i in its low nibble and 4p + i + 2 in its high one; so 32 bytes give a
// quad for each of the group's 16 positions, and one shift, or and mask ((x | x << 12) &
// 0x0f0f0f0f on a quad widened to 32 bits) spread it to four bytes in element order, what
// unsigned-by-signed byte dot products (vpdpbusd, vpmaddubsw, sdot) take. Values (q4v16):
// byte q[l][e] holds element e (low) and e + 16 (high) of position l, so a mask gives a row's
// first 16 codes in order and a shift the last.
struct KeyGroupQ4 {
    uint8_t q[kBlockK / 4][kKvGroup][2];
    float d[kKvGroup];
};
struct ValueGroupQ4 {
    uint8_t q[kKvGroup][kBlockK / 2];
    float d[kKvGroup];
};
static_assert(sizeof(KeyGroupQ4) == 320 && sizeof(ValueGroupQ4) == 320,
              "the 4-bit cache's groups are part of the kernel ABI");
// Code e (< 32) of position l (< 16) in a block of either cache's groups: what the layouts mean.
inline int key_code(const KeyGroupQ8& g, int l, int e) {
    return g.q[e / 2][l][e % 2];
}
inline int key_code(const KeyGroupQ4& g, int l, int e) {
    return (g.q[e / 4][l][e % 2] >> 4 * (e / 2 % 2) & 15) - 8;
}
inline int value_code(const ValueGroupQ8& g, int l, int e) {
    return g.q[l][e];
}
inline int value_code(const ValueGroupQ4& g, int l, int e) {
    return (g.q[l][e % (kBlockK / 2)] >> 4 * (e / (kBlockK / 2)) & 15) - 8;
}
// Bytes per 32 cached values, of the int8 and the 4-bit cache.
inline constexpr int64_t kKvBlockBytes = sizeof(KeyGroupQ8) / kKvGroup;
inline constexpr int64_t kKvBlockBytesQ4 = sizeof(KeyGroupQ4) / kKvGroup;

// One symmetric int8 block, the definition of q8a and of the int8 cache's blocks:
// d = amax / 127, q = round(x / d) (half away from zero) within +-127; returns d.
float quantize_block_q8(const float* x, int8_t* q);

// One symmetric 4-bit block, the definition of the 4-bit cache's blocks: d = amax / 7,
// q = round(x / d) (half away from zero) within +-7; returns d. The largest element is exact:
// amax / 7.5 within [-8, 7] (every code used, a 7 % smaller step, the largest positive element
// half a step off) scored a 6 % larger mean KL on the trained testbed (docs/quality.md).
float quantize_block_q4(const float* x, int8_t* q);

// A query row for integer dot products with an int8 cache: s = amax / 32767, q = round(x / s)
// (half away from zero) within +-32767; returns s. Scalar, the same codes on every table.
float quantize_row_q16(const float* x, int16_t* q, int64_t n);
// A query row against the 4-bit cache's keys: q8a's int8 blocks (quantize_block_q8 per block
// of 32: codes [d], scales [d / 32]) and each block's sum of codes (sums [d / 32], for the
// keys' offset of 8). Scalar, as quantize_row_q16.
void quantize_query_q4(const float* x, int64_t d, int8_t* codes, float* scales, int32_t* sums);

// Key or value x [d] (d a multiple of 32) as position j of a head's int8 cache `groups`
// (quantize_block_q8 per block): scalar, the same bytes on every CPU. A cache row is written
// once and read at every later step, so its speed hardly matters.
void store_key_q8(const float* x, KeyGroupQ8* groups, int64_t j, int64_t d);
void store_value_q8(const float* x, ValueGroupQ8* groups, int64_t j, int64_t d);
// The same for the 4-bit cache (quantize_block_q4 per block).
void store_key_q4(const float* x, KeyGroupQ4* groups, int64_t j, int64_t d);
void store_value_q4(const float* x, ValueGroupQ4* groups, int64_t j, int64_t d);
// Groups of a head's int8 or 4-bit cache for n positions of d elements.
inline int64_t kv_groups(int64_t n, int64_t d) {
    return (n + kKvGroup - 1) / kKvGroup * (d / kBlockK);
}
// Rows x [n, d] as a head's first n positions into kv_groups(n, d) groups, the rest of the
// last group zeroed (tests and benches).
void quantize_keys_q8(const float* x, KeyGroupQ8* groups, int64_t n, int64_t d);
void quantize_values_q8(const float* x, ValueGroupQ8* groups, int64_t n, int64_t d);
void quantize_keys_q4(const float* x, KeyGroupQ4* groups, int64_t n, int64_t d);
void quantize_values_q4(const float* x, ValueGroupQ4* groups, int64_t n, int64_t d);

// IEEE half and bfloat16 to float (exact).
float f16_to_f32(uint16_t h);
inline float bf16_to_f32(uint16_t h) {
    const uint32_t bits = uint32_t{h} << 16;
    float f;
    __builtin_memcpy(&f, &bits, sizeof f);
    return f;
}

}  // namespace qe
