// SPDX-License-Identifier: Apache-2.0
// The part of the x86 W4A8/W8A8 products that does not depend on the vector width, written once
// for the two row vectors the x86 tables use:
//   QE_Q8A_ROWS 8    __m256, lane r = row r of one row group: avx2, avx_vnni and the decode path
//                    of avx512_vnni (matmul_q8a_ymm_inl.h)
//   QE_Q8A_ROWS 16   __m512, lanes 0-7 = row group g, lanes 8-15 = row group g + 1: the
//                    avx512_vnni prefill (matmul_avx512_vnni.cc)
// It holds the unpacking of a block's codes, its row factors, the float combination of its
// integer dot, the activations' broadcast and the token loops of a prefill product; the integer
// dot itself is ISA-specific (avx2's pmaddubsw core, matmul_vnni_ymm_inl.h, the two-group
// vpdpbusd of matmul_avx512_vnni.cc). Included INSIDE an anonymous namespace of a translation
// unit compiled for that width (after <immintrin.h>, <cstring> and kernels/format_dispatch.h),
// with QE_Q8A_ROWS defined, which it undefines; so each ISA keeps its own copy (STYLE.md §5).
//
// The float combination per block repeats ref::row_dot operation by operation: the factor
// (row scale * activation scale) rounded, then one fused multiply-add per term; a minimum term
// takes the activation block's scaled sum d * float(sum), rounded once. So every table returns
// ref's bits.

#if QE_Q8A_ROWS == 8
using VecF = __m256;
using VecI = __m256i;
#define QE_V(op) _mm256_##op
#define QE_SI(op) _mm256_##op##_si256
constexpr bool kCombineRemovesQ4Offset = true;  // see combine

// 32 bytes of a row group's quant record: one step of 8 rows x 4 columns (q8g32), or two steps
// (the low and high nibbles of a 4-bit record).
static inline VecI load_rec(const uint8_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// 8 row factors of a row group's scale record (f16, u8 or i8 at p), widened to float.
static inline VecF load_half(const uint8_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

static inline VecF load_u8(const uint8_t* p) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
}

static inline VecF load_i8(const uint8_t* p) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}
#elif QE_Q8A_ROWS == 16
using VecF = __m512;
using VecI = __m512i;
#define QE_V(op) _mm512_##op
#define QE_SI(op) _mm512_##op##_si512
constexpr bool kCombineRemovesQ4Offset = false;  // see combine

// The same 32 bytes of two row groups' records (a: group g, b: group g + 1) as one vector.
static inline VecI load_rec(const uint8_t* a, const uint8_t* b) {
    return _mm512_inserti64x4(
        _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), 1);
}

// The same for two row groups: a's 8 factors in lanes 0-7, b's in lanes 8-15.
static inline VecF load_half(const uint8_t* a, const uint8_t* b) {
    const __m256i h = _mm256_inserti128_si256(
        _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(b)), 1);
    return _mm512_cvtph_ps(h);
}

static inline VecF load_u8(const uint8_t* a, const uint8_t* b) {
    const __m128i v = _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a)),
                                         _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b)));
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v));
}

static inline VecF load_i8(const uint8_t* a, const uint8_t* b) {
    const __m128i v = _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a)),
                                         _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b)));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
}
#else
#error "matmul_q8a_inl.h: define QE_Q8A_ROWS as 8 or 16 before including it"
#endif

// ---- a block's weights: 8 step vectors, step s = columns 4s..4s+3 of every row -------------
// rec: the block's quant record, one pointer per row group of the vector.

// 4-bit codes (u8 0..15) of a 128-byte record: 32-byte chunk c holds step 2c in its low
// nibbles and step 2c + 1 in its high nibbles.
template <typename... R>
static inline void unpack_q4(VecI* w, R... rec) {
    const VecI mask = QE_V(set1_epi8)(0x0f);
    for (int c = 0; c < 4; ++c) {
        const VecI v = load_rec((rec + 32 * c)...);
        w[2 * c] = QE_SI (and)(v, mask);
        w[2 * c + 1] = QE_SI (and)(QE_V(srli_epi16)(v, 4), mask);
    }
}

// q6k: unsigned 6-bit codes (0..63) of a 192-byte record: the 4-bit record of the low nibbles,
// then two 32-byte vectors whose byte bits 2t..2t+1 are the high bits of step 4h + t. The
// 16-bit shifts carry bits across bytes only into bits the 0x30 mask drops.
template <typename... R>
static inline void unpack_q6(VecI* w, R... rec) {
    unpack_q4(w, rec...);
    const VecI mask = QE_V(set1_epi8)(0x30);
    for (int h = 0; h < 2; ++h) {
        const VecI v = load_rec((rec + kQ6HighOffset + 32 * h)...);
        VecI* wh = w + 4 * h;
        wh[0] = QE_SI(or)(wh[0], QE_SI (and)(QE_V(slli_epi16)(v, 4), mask));
        wh[1] = QE_SI(or)(wh[1], QE_SI (and)(QE_V(slli_epi16)(v, 2), mask));
        wh[2] = QE_SI(or)(wh[2], QE_SI (and)(v, mask));
        wh[3] = QE_SI(or)(wh[3], QE_SI (and)(QE_V(srli_epi16)(v, 2), mask));
    }
}

// q8g32 bytes as stored (offset binary u8 = q + 128) of a 256-byte record: the unsigned
// operand of vpdpbusd.
template <typename... R>
static inline void unpack_u8(VecI* w, R... rec) {
    for (int s = 0; s < 8; ++s) w[s] = load_rec((rec + 32 * s)...);
}

// Step s's 4 activation bytes in every int32 lane, from memory (a load-port broadcast).
static inline VecI bcast_step(const int8_t* q, int s) {
    int32_t v;
    std::memcpy(&v, q + 4 * s, 4);
    return QE_V(set1_epi32)(v);
}

// Float state of one token: acc (and acc_min, the q4k minimum term) per row lane.
struct Acc {
    VecF acc = QE_V(setzero_ps)();
    VecF acc_min = QE_V(setzero_ps)();
};

// A block's per-row factors, widened once per block and shared by every token of a gemm tile
// (widening them per token cost 2-4 vector ops per token and block).
struct Scales {
    VecF a, b;  // q8g32/q4g32: d; q4ag32: d, m; q4k: sc, mn; q6k: sc
};

// s: the block's scale record, one pointer per row group of the vector.
template <WeightFormat F, typename... S>
static inline Scales load_scales(S... s) {
    if constexpr (F == WeightFormat::kQ8g32 || F == WeightFormat::kQ4g32) {
        return {load_half(s...), QE_V(setzero_ps)()};
    } else if constexpr (F == WeightFormat::kQ4ag32) {
        return {load_half(s...), load_half((s + 16)...)};
    } else if constexpr (F == WeightFormat::kQ6k) {
        return {load_i8(s...), QE_V(setzero_ps)()};
    } else {
        return {load_u8(s...), load_u8((s + 8)...)};
    }
}

// Adds one block to a token's accumulators, as ref::row_dot does per row. dot: the exact
// integer dot of the codes with x.q, offsets removed (q8g32: - 128 * sum; q6k: - 32 * sum;
// q4g32: - 8 * sum, which the 256-bit kernels leave to this function and the 512-bit ones
// seed their dot with); q6k and q4k keep integer sub-scales until their row factors (finish).
// xs: the block's scaled sum x.d * float(x.sum), read by q4ag32 and q4k only.
// kMin = false leaves q4k's minimum term to add_q4k_min_terms.
template <WeightFormat F, bool kMin = true>
static inline void combine(Acc& a, VecI dot, const Scales& sc, const BlockQ8A& x, const float& xs) {
    const VecF xd = QE_V(set1_ps)(x.d);
    if constexpr (F == WeightFormat::kQ4g32 && kCombineRemovesQ4Offset) {
        dot = QE_V(sub_epi32)(dot, QE_V(set1_epi32)(8 * x.sum));
    }
    a.acc = QE_V(fmadd_ps)(QE_V(mul_ps)(sc.a, xd), QE_V(cvtepi32_ps)(dot), a.acc);
    if constexpr (F == WeightFormat::kQ4ag32) {
        a.acc = QE_V(fmadd_ps)(sc.b, QE_V(set1_ps)(xs), a.acc);
    } else if constexpr (F == WeightFormat::kQ4k && kMin) {  // apart until the row factors
        a.acc_min = QE_V(fmadd_ps)(sc.b, QE_V(set1_ps)(xs), a.acc_min);
    }
}

// q4k's minimum terms of T tokens, a second pass over the blocks after their dots (combine<kQ4k,
// false>): acc_min depends on the block minimums and the tokens' scaled sums only, and gets
// ref's operations in ref's block order either way. Taken out of the dot loop, the T min
// accumulators and the minimums no longer compete with the codes for registers (the 4-token
// avx2 loop spilled; docs/serving.md, "Where a step's time goes"). s: the first block's scale
// record, one pointer per row group of the vector; xs: block b's sum of token t at
// xs[b * lds + t].
template <int T, typename... S>
static inline void add_q4k_min_terms(Acc* a, int64_t nb, const float* xs, int64_t lds, S... s) {
    constexpr int64_t sb = scale_record_bytes(WeightFormat::kQ4k);
    for (int64_t b = 0; b < nb; ++b) {
        const VecF mn = load_u8((s + b * sb + 8)...);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            a[t].acc_min = QE_V(fmadd_ps)(mn, QE_V(set1_ps)(xs[b * lds + t]), a[t].acc_min);
        }
    }
}

// ---- the token loops of a prefill product --------------------------------------------------

// The scaled sums of q8a blocks, computed once per product for all row groups (formats with a
// block minimum): kMaxSums of them on the stack, so a product runs in chunks of tokens.
constexpr int64_t kMaxSums = 8192;

// Sums of m tokens of nb blocks each, block-major: token t's block b at out[b * m + t], so a
// tile's tokens are adjacent (one pointer for the tile instead of one per token).
static inline void scaled_sums(const BlockQ8A* x, int64_t m, int64_t nb, float* out) {
    for (int64_t t = 0; t < m; ++t) {
        const BlockQ8A* xt = x + t * nb;
        for (int64_t b = 0; b < nb; ++b) out[b * m + t] = xt[b].d * float(xt[b].sum);
    }
}

// Tokens per chunk for blocks of nb per token: a multiple of 8 (whole tiles); 0 if fewer than
// 8 tokens' sums fit (k > 32768).
static inline int64_t chunk_tokens(int64_t nb) {
    return kMaxSums / nb / 8 * 8;
}

// Calls body(t0, xc, mc, sums) for chunks [t0, t0 + mc) of the m tokens x (nb blocks each;
// xc = x + t0 * nb), with the chunk's scaled sums (scaled_sums) for the formats with a block
// minimum, so the weights stream once per chunk: 256 tokens for k = 1024, 72 for k = 3584.
// When not even 8 tokens' sums fit, calls no_room() instead (a path without the sums).
template <WeightFormat F, typename Body, typename NoRoom>
static inline QE_ALWAYS_INLINE void for_token_chunks(const BlockQ8A* x, int64_t m, int64_t nb,
                                                     Body&& body, NoRoom&& no_room) {
    alignas(sizeof(VecF)) float sums[has_block_min(F) ? kMaxSums : 1];
    int64_t chunk = m;
    if constexpr (has_block_min(F)) {
        chunk = chunk_tokens(nb);
        if (chunk == 0) {
            no_room();
            return;
        }
    }
    for (int64_t t0 = 0; t0 < m; t0 += chunk) {
        const int64_t mc = m - t0 < chunk ? m - t0 : chunk;
        const BlockQ8A* xc = x + t0 * nb;
        if constexpr (has_block_min(F)) scaled_sums(xc, mc, nb, sums);
        body(t0, xc, mc, static_cast<const float*>(sums));
    }
}

template <int T>
using TileTokens = std::integral_constant<int, T>;

// Calls tile(TileTokens<T>{}, t) over tokens [0, m) in tiles of T = 8, then one tile of the 1
// to 7 left: a tile decodes a block's weights once for its T tokens, so a serving step of 5-7
// sequences decodes them once, not twice (a tile of 4 and one of 1-3, as before).
template <typename Tile>
static inline QE_ALWAYS_INLINE void for_token_tiles(int64_t m, Tile&& tile) {
    int64_t t = 0;
    for (; t + 8 <= m; t += 8) tile(TileTokens<8>{}, t);
    switch (m - t) {
        case 7:
            tile(TileTokens<7>{}, t);
            break;
        case 6:
            tile(TileTokens<6>{}, t);
            break;
        case 5:
            tile(TileTokens<5>{}, t);
            break;
        case 4:
            tile(TileTokens<4>{}, t);
            break;
        case 3:
            tile(TileTokens<3>{}, t);
            break;
        case 2:
            tile(TileTokens<2>{}, t);
            break;
        case 1:
            tile(TileTokens<1>{}, t);
            break;
        default:
            break;
    }
}

#undef QE_V
#undef QE_SI
#undef QE_Q8A_ROWS
