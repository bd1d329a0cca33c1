// SPDX-License-Identifier: Apache-2.0
// The W4A8/W8A8 products on 256-bit vectors (one row group of 8 rows per vector), shared by the
// avx2 and avx_vnni tables and the decode path of avx512_vnni. Included INSIDE the ISA
// namespace of a translation unit compiled with that ISA's flags (matmul_avx2.cc,
// matmul_avx_vnni.cc, matmul_avx512_vnni.cc), after matmul_q8a_inl.h (QE_Q8A_ROWS 8: unpacking,
// row factors, the float combination, bcast_step, the token loops) and the integer core:
//   unpack_q8(w[8], rec)   8 step vectors from a 256-byte q8g32 record (ISA-specific form)
//   dot_q4(w, x)           int32 lane r = sum_k code[r, k] * x.q[k] over the 32 columns
//   dot_q8(w, x)           int32 lane r = sum_k (u8[r, k] - 128) * x.q[k]
//   dot_q6(w, x)           int32 lane r = sum_k (u6[r, k] - 32) * x.q[k]
//   kTileDotsQ4, tile_dots_q4<T>(rec, x, ldx, dots)   optional: dot_q4 of T tokens (x[t * ldx])
//                          with one 4-bit record at once, for gemm tiles (avx2: step-major)
// so every function here exists once per ISA namespace (no cross-ISA inlining, STYLE.md §5).
//
// Layout (docs/weight-formats.md): one 32-byte load = the same 4 columns of the 8 rows of a
// row group, so int32 lane r accumulates row r, and the activations' 4 bytes of a step are
// broadcast to every lane.
//
// gemm keeps one row group's unpacked block in registers and runs up to 8 tokens over it, so
// weights are decoded once per 8 tokens; the row group's records (k/32 * 144 bytes) and the
// tokens' activations stay in L1/L2 across the token tiles. With 16 ymm registers the 8 tokens'
// accumulators live on the stack (L1, store-forwarded); that still measured ~10% faster than
// 4 register-resident tokens on avx2 and avx_vnni, because decoding the weights and widening
// the block's factors are then shared by twice the tokens.

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
        unpack_q8(wv, rec);
    } else if constexpr (F == WeightFormat::kQ6k) {
        unpack_q6(wv, rec);
    } else {
        unpack_q4(wv, rec);
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
        // As gemv_format: the next group's block one group ahead (a few tokens per group, as
        // when verifying drafts, leave the product as memory-bound as a decode step).
        const char* next = reinterpret_cast<const char*>(rec + (nb + b) * qbytes);
        for (int64_t line = 0; line < qbytes; line += 64) _mm_prefetch(next + line, _MM_HINT_T1);
        if (b % (64 / sbytes) == 0) {
            _mm_prefetch(reinterpret_cast<const char*>(sc + (nb + b) * sbytes), _MM_HINT_T1);
        }
        const Scales scb = load_scales<F>(sc + b * sbytes);
        constexpr bool k4bit = F == WeightFormat::kQ4g32 || F == WeightFormat::kQ4ag32 ||
                               F == WeightFormat::kQ4k;
        // Step-major dots for the short tiles of a serving step (avx2, L2-resident q4k
        // 2048 x 1024, CPU time: 3-5 tokens 18-24 % less, 6-7 5-10 %), not for tiles of 8,
        // whose 8 int16 sums, float accumulators and temporaries spill again (17 % slower).
        if constexpr (kTileDotsQ4 && k4bit && T < 8) {
            __m256i dots[T];
            tile_dots_q4<T>(rec + b * qbytes, x + b, nb, dots);
#pragma GCC unroll 8
            for (int t = 0; t < T; ++t) {
                const BlockQ8A& xb = x[t * nb + b];
                combine<F, F != WeightFormat::kQ4k>(a[t], dots[t], scb, xb, xs[b * lds + t]);
            }
        } else {
            __m256i wv[8];
            unpack<F>(rec + b * qbytes, wv);
#pragma GCC unroll 8
            for (int t = 0; t < T; ++t) {
                const BlockQ8A& xb = x[t * nb + b];
                combine<F, F != WeightFormat::kQ4k>(a[t], block_dot<F>(wv, xb), scb, xb,
                                                    xs[b * lds + t]);
            }
        }
    }
    if constexpr (F == WeightFormat::kQ4k) add_q4k_min_terms<T>(a, nb, xs, lds, sc);
    for (int t = 0; t < T; ++t) store_rows(y + t * ldy, finish<F>(a[t], w, g), w, g);
}

template <WeightFormat F>
static void gemm_format(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
                        int64_t g_begin, int64_t g_end) {
    const int64_t nb = w.blocks;
    for_token_chunks<F>(
        x, m, nb,
        [&](int64_t t0, const BlockQ8A* xc, int64_t mc, const float* sums) QE_ALWAYS_INLINE {
            float* yc = y + t0 * ldy;
            for (int64_t g = g_begin; g < g_end; ++g) {
                for_token_tiles(mc, [&](auto nt, int64_t t) QE_ALWAYS_INLINE {
                    gemm_tile<F, decltype(nt)::value>(w, xc + t * nb, sums + t, mc, yc + t * ldy,
                                                      ldy, g);
                });
            }
        },
        [&]() QE_ALWAYS_INLINE {  // token by token, the same arithmetic
            for (int64_t t = 0; t < m; ++t)
                gemv_format<F>(w, x + t * nb, y + t * ldy, g_begin, g_end);
        });
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
