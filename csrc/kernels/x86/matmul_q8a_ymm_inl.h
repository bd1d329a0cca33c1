// SPDX-License-Identifier: Apache-2.0
// The W4A8/W8A8 products on 256-bit vectors, shared by the avx2 and avx_vnni tables. This file
// is included INSIDE the ISA namespace of a translation unit compiled with that ISA's flags
// (matmul_avx2.cc, matmul_avx_vnni.cc; kernels/format_dispatch.h included first), after it
// defined the integer core:
//   unpack_q4(rec, w[8])   8 step vectors of 4-bit codes (u8 0..15) from a 128-byte record
//   unpack_q8(rec, w[8])   8 step vectors from a 256-byte q8g32 record (ISA-specific form)
//   dot_q4(w, x)           int32 lane r = sum_k code[r, k] * x.q[k] over the 32 columns
//   dot_q8(w, x)           int32 lane r = sum_k (u8[r, k] - 128) * x.q[k]
//   dot_q6(w, x)           int32 lane r = sum_k (u6[r, k] - 32) * x.q[k], w from unpack_q6 below
// so every function here exists once per ISA namespace (no cross-ISA inlining, STYLE.md §5).
//
// Layout (docs/weight-formats.md): one 32-byte load = the same 4 columns of the 8 rows of a
// row group, so int32 lane r accumulates row r, and the activations' 4 bytes of a step are
// broadcast to every lane. The float combination per block repeats `ref` operation by
// operation (the rounded factor, then one fused multiply-add per term), which makes the result
// bit-exact.
//
// gemm keeps one row group's unpacked block in registers and runs up to 8 tokens over it, so
// weights are decoded once per 8 tokens; the row group's records (k/32 * 144 bytes) and the
// tokens' activations stay in L1/L2 across the token tiles. With 16 ymm registers the 8 tokens'
// accumulators live on the stack (L1, store-forwarded); that still measured ~10% faster than
// 4 register-resident tokens on avx2 and avx_vnni, because decoding the weights and widening
// the block's factors are then shared by twice the tokens.

static inline __m256 load_half8(const uint8_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

static inline __m256 load_u8x8(const uint8_t* p) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
}

static inline __m256 load_i8x8(const uint8_t* p) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}

// q6k: 8 step vectors of unsigned 6-bit codes (0..63) from a 192-byte record: the 4-bit record
// of the low nibbles, then two 32-byte vectors whose byte bits 2t..2t+1 are the high bits of
// step 4h + t. The 16-bit shifts carry bits across bytes only into bits the 0x30 mask drops.
static inline void unpack_q6(const uint8_t* rec, __m256i* w) {
    unpack_q4(rec, w);
    const __m256i mask = _mm256_set1_epi8(0x30);
    for (int h = 0; h < 2; ++h) {
        const __m256i v =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + kQ6HighOffset + 32 * h));
        __m256i* wh = w + 4 * h;
        wh[0] = _mm256_or_si256(wh[0], _mm256_and_si256(_mm256_slli_epi16(v, 4), mask));
        wh[1] = _mm256_or_si256(wh[1], _mm256_and_si256(_mm256_slli_epi16(v, 2), mask));
        wh[2] = _mm256_or_si256(wh[2], _mm256_and_si256(v, mask));
        wh[3] = _mm256_or_si256(wh[3], _mm256_and_si256(_mm256_srli_epi16(v, 2), mask));
    }
}

// Float state of one row group for one token: acc (and acc_min for q4k) per row lane.
struct Acc {
    __m256 acc = _mm256_setzero_ps();
    __m256 acc_min = _mm256_setzero_ps();
};

// A block's per-row factors, widened once per block and shared by every token of a gemm tile
// (widening them per token cost 2-4 vector ops per token and block).
struct Scales {
    __m256 a, b;  // q8g32/q4g32: d; q4ag32: d, m; q4k: sc, mn; q6k: sc
};

template <WeightFormat F>
static inline Scales load_scales(const uint8_t* sc) {
    if constexpr (F == WeightFormat::kQ8g32 || F == WeightFormat::kQ4g32) {
        return {load_half8(sc), _mm256_setzero_ps()};
    } else if constexpr (F == WeightFormat::kQ4ag32) {
        return {load_half8(sc), load_half8(sc + 16)};
    } else if constexpr (F == WeightFormat::kQ6k) {
        return {load_i8x8(sc), _mm256_setzero_ps()};
    } else {
        return {load_u8x8(sc), load_u8x8(sc + 8)};
    }
}

// Adds one block's integer dot to the accumulators, exactly as ref::row_dot does per row.
// xs: the block's scaled sum x.d * float(x.sum) (read by q4ag32 and q4k only).
template <WeightFormat F>
static inline void combine(Acc& a, __m256i dot, const Scales& sc, const BlockQ8A& x,
                           const float& xs) {
    const __m256 xd = _mm256_set1_ps(x.d);
    // q8g32, q6k (integer sub-scale, row factor at the end), q4ag32, q4k: the dot as it is;
    // q4g32: minus the offset 8 * sum first.
    const __m256i d =
        F == WeightFormat::kQ4g32 ? _mm256_sub_epi32(dot, _mm256_set1_epi32(8 * x.sum)) : dot;
    a.acc = _mm256_fmadd_ps(_mm256_mul_ps(sc.a, xd), _mm256_cvtepi32_ps(d), a.acc);
    if constexpr (F == WeightFormat::kQ4ag32) {
        a.acc = _mm256_fmadd_ps(sc.b, _mm256_set1_ps(xs), a.acc);
    } else if constexpr (F == WeightFormat::kQ4k) {  // the min term apart until the row factors
        a.acc_min = _mm256_fmadd_ps(sc.b, _mm256_set1_ps(xs), a.acc_min);
    }
}

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

// The 8 rows' results of a row group (q4k, q6k: their row factors applied).
template <WeightFormat F>
static inline __m256 finish(const Acc& a, const PackedMatrix& w, int64_t g) {
    if constexpr (F == WeightFormat::kQ6k) {
        return _mm256_mul_ps(_mm256_loadu_ps(w.row_params + g * 8), a.acc);
    } else if constexpr (F == WeightFormat::kQ4k) {
        const float* rp = w.row_params + g * 16;
        return _mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(rp), a.acc),
                             _mm256_mul_ps(_mm256_loadu_ps(rp + 8), a.acc_min));
    } else {
        (void)w;
        (void)g;
        return a.acc;
    }
}

// Stores the rows of group g that exist (the last group may be partial).
static inline void store_rows(float* y, __m256 v, const PackedMatrix& w, int64_t g) {
    const int64_t r0 = g * kRowPack;
    if (r0 + kRowPack <= w.rows) {
        _mm256_storeu_ps(y + r0, v);
    } else {
        alignas(32) float tmp[8];
        _mm256_store_ps(tmp, v);
        for (int64_t r = r0; r < w.rows; ++r) y[r] = tmp[r - r0];
    }
}

template <WeightFormat F>
static inline __m256i block_dot(const __m256i* wv, const BlockQ8A& x) {
    if constexpr (F == WeightFormat::kQ8g32) {
        return dot_q8(wv, x);
    } else if constexpr (F == WeightFormat::kQ6k) {
        return dot_q6(wv, x);
    } else {
        return dot_q4(wv, x);
    }
}

template <WeightFormat F>
static inline void unpack(const uint8_t* rec, __m256i* wv) {
    if constexpr (F == WeightFormat::kQ8g32) {
        unpack_q8(rec, wv);
    } else if constexpr (F == WeightFormat::kQ6k) {
        unpack_q6(rec, wv);
    } else {
        unpack_q4(rec, wv);
    }
}

template <WeightFormat F>
static void gemv_format(const PackedMatrix& w, const BlockQ8A* x, float* y, int64_t g_begin,
                        int64_t g_end) {
    constexpr int64_t qbytes = quant_record_bytes(F), sbytes = scale_record_bytes(F);
    const int64_t nb = w.blocks;
    for (int64_t g = g_begin; g < g_end; ++g) {
        const uint8_t* rec = w.quants + g * nb * qbytes;
        const uint8_t* sc = w.scales + g * nb * sbytes;
        Acc a;
        for (int64_t b = 0; b < nb; ++b) {
            // A group's records are only k/32 * 128 bytes (4 KiB for k = 1024 in q4): the
            // hardware prefetchers would restart at every group, so the same block of the next
            // group is requested one group ahead (into L2).
            const char* next = reinterpret_cast<const char*>(rec + (nb + b) * qbytes);
            for (int64_t line = 0; line < qbytes; line += 64)
                _mm_prefetch(next + line, _MM_HINT_T1);
            if (b % (64 / sbytes) == 0) {
                _mm_prefetch(reinterpret_cast<const char*>(sc + (nb + b) * sbytes), _MM_HINT_T1);
            }
            __m256i wv[8];
            unpack<F>(rec + b * qbytes, wv);
            const float xs = has_block_min(F) ? x[b].d * float(x[b].sum) : 0.0f;
            combine<F>(a, block_dot<F>(wv, x[b]), load_scales<F>(sc + b * sbytes), x[b], xs);
        }
        store_rows(y, finish<F>(a, w, g), w, g);
    }
}

// T tokens (x, xs, y at the first; token t's scaled sum of block b at xs[b * lds + t]) times
// row group g.
template <WeightFormat F, int T>
static inline void gemm_tile(const PackedMatrix& w, const BlockQ8A* x, const float* xs, int64_t lds,
                             float* y, int64_t ldy, int64_t g) {
    constexpr int64_t qbytes = quant_record_bytes(F), sbytes = scale_record_bytes(F);
    const int64_t nb = w.blocks;
    const uint8_t* rec = w.quants + g * nb * qbytes;
    const uint8_t* sc = w.scales + g * nb * sbytes;
    Acc a[T];
    for (int64_t b = 0; b < nb; ++b) {
        __m256i wv[8];
        unpack<F>(rec + b * qbytes, wv);
        const Scales scb = load_scales<F>(sc + b * sbytes);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            const BlockQ8A& xb = x[t * nb + b];
            combine<F>(a[t], block_dot<F>(wv, xb), scb, xb, xs[b * lds + t]);
        }
    }
    for (int t = 0; t < T; ++t) store_rows(y + t * ldy, finish<F>(a[t], w, g), w, g);
}

template <WeightFormat F>
static void gemm_format(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
                        int64_t g_begin, int64_t g_end) {
    const int64_t nb = w.blocks;
    alignas(32) float sums[has_block_min(F) ? kMaxSums : 1];
    int64_t chunk = m;
    if constexpr (has_block_min(F)) {
        chunk = chunk_tokens(nb);
        if (chunk == 0) {  // no room for a tile's sums: token by token, the same arithmetic
            for (int64_t t = 0; t < m; ++t)
                gemv_format<F>(w, x + t * nb, y + t * ldy, g_begin, g_end);
            return;
        }
    }
    for (int64_t t0 = 0; t0 < m; t0 += chunk) {
        const int64_t mc = m - t0 < chunk ? m - t0 : chunk;
        const BlockQ8A* xc = x + t0 * nb;
        float* yc = y + t0 * ldy;
        if constexpr (has_block_min(F)) scaled_sums(xc, mc, nb, sums);
        for (int64_t g = g_begin; g < g_end; ++g) {
            int64_t t = 0;
            for (; t + 8 <= mc; t += 8)
                gemm_tile<F, 8>(w, xc + t * nb, sums + t, mc, yc + t * ldy, ldy, g);
            for (; t + 4 <= mc; t += 4)
                gemm_tile<F, 4>(w, xc + t * nb, sums + t, mc, yc + t * ldy, ldy, g);
            switch (mc - t) {
                case 3:
                    gemm_tile<F, 3>(w, xc + t * nb, sums + t, mc, yc + t * ldy, ldy, g);
                    break;
                case 2:
                    gemm_tile<F, 2>(w, xc + t * nb, sums + t, mc, yc + t * ldy, ldy, g);
                    break;
                case 1:
                    gemm_tile<F, 1>(w, xc + t * nb, sums + t, mc, yc + t * ldy, ldy, g);
                    break;
                default:
                    break;
            }
        }
    }
}

void gemv_q8a(const PackedMatrix& w, const BlockQ8A* x, float* y, int64_t g_begin, int64_t g_end) {
    with_format(w.format, [&](auto fmt) QE_ALWAYS_INLINE {
        gemv_format<decltype(fmt)::value>(w, x, y, g_begin, g_end);
    });
}

void gemm_q8a(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
              int64_t g_begin, int64_t g_end) {
    with_format(w.format, [&](auto fmt) QE_ALWAYS_INLINE {
        gemm_format<decltype(fmt)::value>(w, x, m, y, ldy, g_begin, g_end);
    });
}
