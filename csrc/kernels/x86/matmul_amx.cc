// SPDX-License-Identifier: Apache-2.0
// AMX-INT8 prefill product: tdpbssd/tdpbsud multiply a tile of 16 tokens' activations (A: 16
// rows x 32 signed bytes, one q8a block per token, loaded in place with the token stride) by a
// tile of one row group's weight codes (B: 8 rows x 32 bytes). B's row s holds step s of the
// block, the 4 columns of each of the 8 rows, which is exactly the packed record layout
// (docs/weight-formats.md); a 256-byte buffer per group holds the codes in the signedness the
// instruction wants. C (16 tokens x 8 rows, int32) is the exact integer dot per block; two row
// groups' C tiles are stored side by side so one 16-lane vector holds a token's 16 rows, and
// the float work per token and block is ref's, so results are ref's bits. One tdp* is 4096
// multiply-adds: the per-block float work (4 vector ops per token for the symmetric formats)
// is what remains, about a third of the 512-bit VNNI kernel's instructions per product.
//
// Decode (m = 1), token tails (m % 16) and an odd last row group use the avx512_vnni kernel.
// Compiled with the avx512_vnni flags plus -mamx-tile -mamx-int8 (per file); the table needs
// kFeatureAmxInt8, which includes the OS permission to use the tile state.
#include <immintrin.h>

#include <cstring>

// GCC 12's own AVX-512 intrinsics trip -W(maybe-)uninitialized when inlined (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include "kernels/kernels.h"
#include "kernels/x86/avx512_util.h"

namespace qe::amx {
namespace {

using x86::Acc2;
using x86::finish2;
using x86::load_scales;
using x86::Scales2;
using x86::store16;

constexpr int kTileTokens = 16;

// Tile registers: 0, 1 = C of group g, g + 1; 2 = A (tokens); 3, 4 = B of group g, g + 1.
struct alignas(64) TileConfig {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

TileConfig make_config() {
    TileConfig c;
    for (int t : {0, 1}) {
        c.rows[t] = kTileTokens;
        c.colsb[t] = 8 * 4;  // 8 rows' int32 dots
    }
    c.rows[2] = kTileTokens;
    c.colsb[2] = kBlockK;  // one block of activations per token
    for (int t : {3, 4}) {
        c.rows[t] = kBlockK / kStepK;    // 8 steps
        c.colsb[t] = kRowPack * kStepK;  // 8 rows x 4 columns
    }
    return c;
}

// Weight codes as tdp* wants them. Symmetric formats become signed (q8g32: u8 - 128 = u8 xor
// 0x80; q4g32: code - 8) so the dot needs no zero-point correction per token (tdpbssd);
// q4ag32 and q4k keep unsigned codes (tdpbsud), their minimum is applied through the sum.
// The 8 rows of B are the 8 steps of the block: step 2c from the low nibbles of 4-bit chunk c,
// step 2c + 1 from the high ones.
template <WeightFormat F>
static inline void weight_tile(const uint8_t* rec, uint8_t* out) {
    if constexpr (F == WeightFormat::kQ8g32) {
        const __m512i flip = _mm512_set1_epi8(char(0x80));
        for (int i = 0; i < 4; ++i) {
            const __m512i v = _mm512_loadu_si512(rec + 64 * i);
            _mm512_store_si512(out + 64 * i, _mm512_xor_si512(v, flip));
        }
    } else {
        const __m256i mask = _mm256_set1_epi8(0x0f), eight = _mm256_set1_epi8(8);
        for (int c = 0; c < 4; ++c) {
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + 32 * c));
            __m256i lo = _mm256_and_si256(v, mask);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
            if constexpr (F == WeightFormat::kQ4g32) {
                lo = _mm256_sub_epi8(lo, eight);
                hi = _mm256_sub_epi8(hi, eight);
            }
            _mm256_store_si256(reinterpret_cast<__m256i*>(out + 64 * c), lo);
            _mm256_store_si256(reinterpret_cast<__m256i*>(out + 64 * c + 32), hi);
        }
    }
}

constexpr bool signed_weights(WeightFormat f) {
    return f == WeightFormat::kQ8g32 || f == WeightFormat::kQ4g32;
}

// 16 tokens (x: their blocks, token stride nb) against row groups g and g + 1. The float work
// per token and block is ref's: acc += (d * xd) * float(dot) [+ (m * xd) * float(sum) for
// q4ag32, in the same expression]; q4k's min term (mn * xd) * float(sum) goes to its own
// accumulator in a second pass over the blocks, with the same operations in the same order.
template <WeightFormat F>
static void tile16(const PackedMatrix& w, const BlockQ8A* x, float* y, int64_t ldy, int64_t g) {
    constexpr int64_t qb = quant_record_bytes(F), sb = scale_record_bytes(F);
    const int64_t nb = w.blocks;
    const uint8_t* q0 = w.quants + g * nb * qb;
    const uint8_t* q1 = q0 + nb * qb;
    const uint8_t* s0 = w.scales + g * nb * sb;
    const uint8_t* s1 = s0 + nb * sb;
    alignas(64) uint8_t b0[256], b1[256];
    alignas(64) int32_t c[kTileTokens][16];
    __m512 acc[kTileTokens];
    for (int t = 0; t < kTileTokens; ++t) acc[t] = _mm512_setzero_ps();
    const int64_t x_stride = nb * int64_t(sizeof(BlockQ8A));
    for (int64_t b = 0; b < nb; ++b) {
        weight_tile<F>(q0 + b * qb, b0);
        weight_tile<F>(q1 + b * qb, b1);
        _tile_loadd(3, b0, 32);
        _tile_loadd(4, b1, 32);
        _tile_loadd(2, x[b].q, x_stride);
        _tile_zero(0);
        _tile_zero(1);
        if constexpr (signed_weights(F)) {
            _tile_dpbssd(0, 2, 3);
            _tile_dpbssd(1, 2, 4);
        } else {
            _tile_dpbsud(0, 2, 3);
            _tile_dpbsud(1, 2, 4);
        }
        _tile_stored(0, &c[0][0], 64);
        _tile_stored(1, &c[0][8], 64);
        const Scales2 sc = load_scales<F>(s0 + b * sb, s1 + b * sb);
        for (int t = 0; t < kTileTokens; ++t) {
            const BlockQ8A& xb = x[t * nb + b];
            const __m512 xd = _mm512_set1_ps(xb.d);
            const __m512 dot = _mm512_cvtepi32_ps(_mm512_load_si512(c[t]));
            const __m512 t1 = _mm512_mul_ps(_mm512_mul_ps(sc.a, xd), dot);
            if constexpr (F == WeightFormat::kQ4ag32) {
                const __m512 t2 =
                    _mm512_mul_ps(_mm512_mul_ps(sc.b, xd), _mm512_set1_ps(float(xb.sum)));
                acc[t] = _mm512_add_ps(acc[t], _mm512_add_ps(t1, t2));
            } else {
                acc[t] = _mm512_add_ps(acc[t], t1);
            }
        }
    }
    if constexpr (F == WeightFormat::kQ4k) {
        for (int t = 0; t < kTileTokens; ++t) {
            Acc2 a;
            a.acc = acc[t];
            for (int64_t b = 0; b < nb; ++b) {
                const BlockQ8A& xb = x[t * nb + b];
                const __m512 mn = x86::load_u8x16(s0 + b * sb + 8, s1 + b * sb + 8);
                a.acc_min =
                    _mm512_add_ps(a.acc_min, _mm512_mul_ps(_mm512_mul_ps(mn, _mm512_set1_ps(xb.d)),
                                                           _mm512_set1_ps(float(xb.sum))));
            }
            store16(y + t * ldy, finish2<F>(a, w, g), w, g);
        }
    } else {
        for (int t = 0; t < kTileTokens; ++t) store16(y + t * ldy, acc[t], w, g);
    }
}

template <WeightFormat F>
static void gemm_format(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
                        int64_t g_begin, int64_t g_end) {
    const int64_t nb = w.blocks, full = m / kTileTokens * kTileTokens;
    int64_t g = g_begin;
    for (; g + 2 <= g_end; g += 2) {
        for (int64_t t = 0; t < full; t += kTileTokens) {
            tile16<F>(w, x + t * nb, y + t * ldy, ldy, g);
        }
    }
    if (full < m) {  // the last tokens of every pair, with the 512-bit kernel
        avx512_vnni::gemm_q8a(w, x + full * nb, m - full, y + full * ldy, ldy, g_begin, g);
    }
    if (g < g_end) avx512_vnni::gemm_q8a(w, x, m, y, ldy, g, g_end);  // an odd last group
}

}  // namespace

void gemm_q8a(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
              int64_t g_begin, int64_t g_end) {
    if (m < kTileTokens) {
        avx512_vnni::gemm_q8a(w, x, m, y, ldy, g_begin, g_end);
        return;
    }
    // Tile configuration is per thread; loading it is cheap next to a prefill product.
    static const TileConfig config = make_config();
    _tile_loadconfig(&config);
    switch (w.format) {
        case WeightFormat::kQ8g32:
            gemm_format<WeightFormat::kQ8g32>(w, x, m, y, ldy, g_begin, g_end);
            break;
        case WeightFormat::kQ4g32:
            gemm_format<WeightFormat::kQ4g32>(w, x, m, y, ldy, g_begin, g_end);
            break;
        case WeightFormat::kQ4ag32:
            gemm_format<WeightFormat::kQ4ag32>(w, x, m, y, ldy, g_begin, g_end);
            break;
        case WeightFormat::kQ4k:
            gemm_format<WeightFormat::kQ4k>(w, x, m, y, ldy, g_begin, g_end);
            break;
        default:
            break;
    }
    _tile_release();  // no tile state to save on context switches between products
}

}  // namespace qe::amx
