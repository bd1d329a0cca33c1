// SPDX-License-Identifier: Apache-2.0
// NEON softmax attention of a call's queries over one KV head's cache (f16 by default, f32
// optional, int8 or 4-bit): scores by 4-lane dot products over the head dimension (integer
// ones against the integer caches, and so is their weighted sum), streaming over tiles of
// kAttentionTile positions with an online softmax (kernels.h): a tile's scores, their max and
// exp_f32x4, then out = out * exp(m_old - m_new) + sum_j p_j v_j; out / sum at the end. The
// queries walk the tiles in blocks, so each tile is read from memory once per block, and a
// token's heads go through a tile together, sharing each key and value load. f16 keys and
// values are widened exactly with fcvtl (ARMv8.0); no fp16 arithmetic, so long contexts cannot
// overflow a half-precision sum.
//
// Included INSIDE the table's namespace of a translation unit (after <arm_neon.h>, <algorithm>,
// <cmath>, <cstring>, <type_traits>, <vector> and neon_inl.h): attention_neon.cc (neon) and,
// with QE_ATTENTION_DOTPROD defined and +dotprod flags, attention_neon_dotprod.cc, whose
// 4-bit keys' scores take sdot (score_q4); so each table keeps its own copy (STYLE.md §5).
// The entry points are the including file's.

namespace {

// Elements i..i+3 (or i) of a float or f16 cache laid out row after row (i = j * d + e).
QE_NEON_INLINE float32x4_t load4(const float* c, int64_t i) {
    return vld1q_f32(c + i);
}
QE_NEON_INLINE float32x4_t load4(const uint16_t* c, int64_t i) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(c + i)));
}
// Elements i..i+7 as two load4's, with one load and one widening for all eight; the same
// values, bit for bit.
QE_NEON_INLINE float32x4x2_t load8(const float* c, int64_t i) {
    return float32x4x2_t{{vld1q_f32(c + i), vld1q_f32(c + i + 4)}};
}
QE_NEON_INLINE float32x4x2_t load8(const uint16_t* c, int64_t i) {
    const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(c + i));
    return float32x4x2_t{{vcvt_f32_f16(vget_low_f16(h)), vcvt_high_f32_f16(h)}};
}
QE_NEON_INLINE float widen(const float* c, int64_t i) {
    return c[i];
}
QE_NEON_INLINE float widen(const uint16_t* c, int64_t i) {
    return f16_to_f32(c[i]);
}

// One query vector of a call: q [d], out [d], the positions it sees, its scratch row p for a
// tile's scores, and its running softmax max m and sum l; against the int8 cache also the
// query in int16 codes qc [d] and their scale qs (quantize_row_q16); against the 4-bit cache
// in int8 codes qb [d], their scales qd and sums qsum per block [d / 32] (quantize_query_q4),
// and qs = 1. QueryCodes fills them.
struct Row {
    const float* q;
    float* out;
    float* p;
    int64_t n;
    float m, l;
    const int16_t* qc = nullptr;
    float qs = 1.0f;
    const int8_t* qb = nullptr;
    const float* qd = nullptr;
    const int32_t* qsum = nullptr;
};
#include "kernels/attention_queries_inl.h"

// Scores of the tile's positions j .. j + P - 1 (key rows j0 + j ..) against R queries that see
// them all: rows[r].p[j + i] = scale * q_r . k[j0 + j + i]. P x R independent FMA chains (one
// chain waits ~4 cycles per FMA on an A76 and its two pipes need ~8 in flight), and each key
// vector is loaded and widened once for all R queries. Each dot sums its lanes in the same
// order as with P = R = 1, so the bits depend on neither.
template <int R, int P, typename T>
QE_NEON_INLINE void score(Row* rows, const T* k, int64_t j0, int64_t j, int64_t d, int64_t d4,
                          float scale) {
    const int64_t row0 = (j0 + j) * d;
    float32x4_t acc[P][R];
    for (int i = 0; i < P; ++i)
        for (int r = 0; r < R; ++r) acc[i][r] = vdupq_n_f32(0.0f);
    int64_t e = 0;
    for (; e + 8 <= d4; e += 8) {
        float32x4x2_t kv[P];
        for (int i = 0; i < P; ++i) kv[i] = load8(k, row0 + i * d + e);
        for (int r = 0; r < R; ++r) {
            const float32x4_t q0 = vld1q_f32(rows[r].q + e), q1 = vld1q_f32(rows[r].q + e + 4);
            for (int i = 0; i < P; ++i)
                acc[i][r] = vfmaq_f32(vfmaq_f32(acc[i][r], q0, kv[i].val[0]), q1, kv[i].val[1]);
        }
    }
    if (e < d4) {
        for (int i = 0; i < P; ++i) {
            const float32x4_t kv = load4(k, row0 + i * d + e);
            for (int r = 0; r < R; ++r)
                acc[i][r] = vfmaq_f32(acc[i][r], vld1q_f32(rows[r].q + e), kv);
        }
    }
    for (int i = 0; i < P; ++i) {
        for (int r = 0; r < R; ++r) {
            float dot = vaddvq_f32(acc[i][r]);
            for (int64_t t = d4; t < d; ++t) dot += rows[r].q[t] * widen(k, row0 + i * d + t);
            rows[r].p[j + i] = dot * scale;
        }
    }
}

// The integer caches: their keys and values go in groups (formats.h) and in integers; the
// 4-bit cache's value nibbles u are widened to the int8 cache's lanes where they are loaded,
// its key nibbles to bytes that meet the query in int8 (score_q4). They stay unsigned: the
// offset of q = u - 8 is taken once per block (a key block's sums lose 8 times the query
// codes' sum, a value block's 8 times the weights' sum), not once per load (the same exact
// int32 results).
template <typename T>
constexpr bool kKeyGroups = std::is_same_v<T, KeyGroupQ8> || std::is_same_v<T, KeyGroupQ4>;
template <typename T>
constexpr bool kValueGroups = std::is_same_v<T, ValueGroupQ8> || std::is_same_v<T, ValueGroupQ4>;
template <typename T>
constexpr bool kNibbles = std::is_same_v<T, KeyGroupQ4> || std::is_same_v<T, ValueGroupQ4>;

// Column pair e of positions l .. l + 3 of a key block, widened to int16 (position, element).
QE_NEON_INLINE int16x8_t key_pairs(const KeyGroupQ8& g, int e, int l) {
    return vmovl_s8(vld1_s8(g.q[e][l]));
}
// Quad p of positions l .. l + 7 of a 4-bit key block: each position's four nibbles
// (unsigned, below 128 as int8) in element order, positions l .. l + 3 in c[0], the rest in
// c[1] (formats.h: a quad's byte i holds elements i and i + 2).
QE_NEON_INLINE void key_quads(const KeyGroupQ4& g, int p, int l, int8x16_t* c) {
    const uint8x16_t b = vld1q_u8(g.q[p][l]);
    const uint16x8_t lo = vreinterpretq_u16_u8(vandq_u8(b, vdupq_n_u8(15)));  // elements 0, 1
    const uint16x8_t hi = vreinterpretq_u16_u8(vshrq_n_u8(b, 4));             // elements 2, 3
    c[0] = vreinterpretq_s8_u16(vzip1q_u16(lo, hi));
    c[1] = vreinterpretq_s8_u16(vzip2q_u16(lo, hi));
}

// A value row's 16 codes from column 16h, as int8; the 4-bit rows' low nibbles are columns
// 0-15, their high ones 16-31 (formats.h).
QE_NEON_INLINE int8x16_t value_codes(const int8_t* row, int h) {
    return vld1q_s8(row + 16 * h);
}
QE_NEON_INLINE int8x16_t value_codes(const uint8_t* row, int h) {
    const uint8x16_t b = vld1q_u8(row);
    // Unsigned nibbles (kNibbles), below 128 as int8.
    return vreinterpretq_s8_u8(h == 0 ? vandq_u8(b, vdupq_n_u8(15)) : vshrq_n_u8(b, 4));
}

// rows[r].p[j ..] = scale * qs_r * acc[g][r], the first m of the 4N positions (4 per g) whose
// scores score_q8 and score_q4 summed.
template <int R, int N>
QE_NEON_INLINE void store_scores(Row* rows, const float32x4_t (&acc)[N][R], int64_t j, int64_t m,
                                 float scale) {
    for (int r = 0; r < R; ++r) {
        float lanes[4 * N];
        for (int g = 0; g < N; ++g)
            vst1q_f32(lanes + 4 * g, vmulq_n_f32(vmulq_n_f32(acc[g][r], rows[r].qs), scale));
        std::memcpy(rows[r].p + j, lanes, size_t(m) * sizeof(float));
    }
}

// Scores on the int8 cache: the query in int16 against the q8k16 keys, 4G positions at a time
// along lanes. A load of a column pair for 4 positions, widened once to
// int16 for all rows, times the row's pair of codes (broadcast) by smlal into int32 lanes
// (position, element), a pairwise add per block to the positions' exact sums, scaled by the
// positions' block scales (beside the codes) into float chains, the row's scale once per
// score. Rows of keys along lanes took, per position and block, a widening, a convert, an FMA
// and later a horizontal sum on top of the same smlal count. A tile starts a group, so 4G
// positions never straddle one; positions past nt are computed from the group's rest
// (allocated whole) and not stored.
template <int R>
QE_NEON_INLINE void score_q8(Row* rows, const KeyGroupQ8* k, int64_t j0, int64_t nt, int64_t d,
                             float scale) {
    // 4G x 2R int32 chains; each row's pair broadcast serves 4G positions (G = 1 took 19 %
    // more instructions than rows of keys had, counted under qemu).
    constexpr int G = R <= 2 ? 4 : 2;
    static_assert(kAttentionTile % kKvGroup == 0 && kKvGroup % (4 * G) == 0,
                  "a tile's quads fall in whole key groups");
    const int64_t nb = d / kBlockK;
    for (int64_t j = 0; j < nt; j += 4 * G) {
        const KeyGroupQ8* kg = k + (j0 + j) / kKvGroup * nb;
        const int l = int((j0 + j) % kKvGroup);
        float32x4_t acc_f[G][R];
        for (int g = 0; g < G; ++g)
            for (int r = 0; r < R; ++r) acc_f[g][r] = vdupq_n_f32(0.0f);
        for (int64_t b = 0; b < nb; ++b) {
            int32x4_t acc[G][R][2];
            for (int g = 0; g < G; ++g)
                for (int r = 0; r < R; ++r) acc[g][r][0] = acc[g][r][1] = vdupq_n_s32(0);
            for (int e = 0; e < kBlockK / 2; ++e) {
                int16x8_t c[G];  // (position, element) pairs of positions l + 4g ..
                for (int g = 0; g < G; ++g) c[g] = key_pairs(kg[b], e, l + 4 * g);
                for (int r = 0; r < R; ++r) {
                    int32_t pair;
                    std::memcpy(&pair, rows[r].qc + b * kBlockK + 2 * e, sizeof pair);
                    const int16x4_t qp = vreinterpret_s16_s32(vdup_n_s32(pair));
                    for (int g = 0; g < G; ++g) {
                        acc[g][r][0] = vmlal_s16(acc[g][r][0], vget_low_s16(c[g]), qp);
                        acc[g][r][1] = vmlal_s16(acc[g][r][1], vget_high_s16(c[g]), qp);
                    }
                }
            }
            for (int g = 0; g < G; ++g) {
                const float32x4_t sb = vld1q_f32(kg[b].d + l + 4 * g);
                for (int r = 0; r < R; ++r) {
                    const int32x4_t sums = vpaddq_s32(acc[g][r][0], acc[g][r][1]);
                    acc_f[g][r] = vfmaq_f32(acc_f[g][r], vcvtq_f32_s32(sums), sb);
                }
            }
        }
        store_scores<R, G>(rows, acc_f, j, nt - j < 4 * G ? nt - j : 4 * G, scale);
    }
}

// Scores on the 4-bit cache: the query in int8 against the q4k16x4 keys, 8G positions at a
// time. A quad of 8 positions (16 bytes) is spread to bytes once for all rows (key_quads);
// with dotprod one sdot per row and 4 positions multiplies their quads by the row's 4 codes
// (a lane of the block's codes in two registers) into the positions' int32 sums. Without it,
// smlal on bytes into int16 lanes (position, element), exact over a block's 8 quads (8 * 15 *
// 127 = 15240 < 2^15), widened by pairwise adds to the positions' sums once per block.
template <int R>
QE_NEON_INLINE void score_q4(Row* rows, const KeyGroupQ4* k, int64_t j0, int64_t nt, int64_t d,
                             float scale) {
    constexpr int G = R <= 2 ? 2 : 1;
    static_assert(kAttentionTile % kKvGroup == 0 && kKvGroup % (8 * G) == 0,
                  "a tile's octets fall in whole key groups");
    const int64_t nb = d / kBlockK;
    for (int64_t j = 0; j < nt; j += 8 * G) {
        const KeyGroupQ4* kg = k + (j0 + j) / kKvGroup * nb;
        const int l = int((j0 + j) % kKvGroup);
        float32x4_t acc_f[2 * G][R];
        for (int g = 0; g < 2 * G; ++g)
            for (int r = 0; r < R; ++r) acc_f[g][r] = vdupq_n_f32(0.0f);
        for (int64_t b = 0; b < nb; ++b) {
            int32x4_t sums[2 * G][R];  // positions l + 4g .. l + 4g + 3
#ifdef QE_ATTENTION_DOTPROD
            int8x16_t qv[R][2];
            for (int r = 0; r < R; ++r) {
                qv[r][0] = vld1q_s8(rows[r].qb + b * kBlockK);
                qv[r][1] = vld1q_s8(rows[r].qb + b * kBlockK + 16);
            }
            for (int g = 0; g < 2 * G; ++g)
                for (int r = 0; r < R; ++r) sums[g][r] = vdupq_n_s32(0);
#pragma GCC unroll 8
            for (int p = 0; p < kBlockK / 4; ++p) {
                int8x16_t c[2 * G];
                for (int g = 0; g < G; ++g) key_quads(kg[b], p, l + 8 * g, c + 2 * g);
                for (int r = 0; r < R; ++r) {
                    for (int g = 0; g < 2 * G; ++g)
                        sums[g][r] = vdotq_laneq_s32(sums[g][r], c[g], qv[r][p / 4], p % 4);
                }
            }
#else
            int16x8_t acc[2 * G][R][2];  // positions (l + 4g, + 1), (+ 2, + 3)
            for (int g = 0; g < 2 * G; ++g)
                for (int r = 0; r < R; ++r) acc[g][r][0] = acc[g][r][1] = vdupq_n_s16(0);
            for (int p = 0; p < kBlockK / 4; ++p) {
                int8x16_t c[2 * G];
                for (int g = 0; g < G; ++g) key_quads(kg[b], p, l + 8 * g, c + 2 * g);
                for (int r = 0; r < R; ++r) {
                    int32_t quad;
                    std::memcpy(&quad, rows[r].qb + b * kBlockK + 4 * p, sizeof quad);
                    const int8x16_t qq = vreinterpretq_s8_s32(vdupq_n_s32(quad));
                    for (int g = 0; g < 2 * G; ++g) {
                        acc[g][r][0] = vmlal_s8(acc[g][r][0], vget_low_s8(c[g]), vget_low_s8(qq));
                        acc[g][r][1] = vmlal_high_s8(acc[g][r][1], c[g], qq);
                    }
                }
            }
            for (int g = 0; g < 2 * G; ++g) {
                for (int r = 0; r < R; ++r) {
                    // (position, element pair) sums, then the positions' in order.
                    sums[g][r] =
                        vpaddq_s32(vpaddlq_s16(acc[g][r][0]), vpaddlq_s16(acc[g][r][1]));
                }
            }
#endif
            for (int g = 0; g < 2 * G; ++g) {
                const float32x4_t sb = vld1q_f32(kg[b].d + l + 4 * g);
                for (int r = 0; r < R; ++r) {
                    const int32x4_t s = vsubq_s32(sums[g][r], vdupq_n_s32(8 * rows[r].qsum[b]));
                    const float32x4_t sq = vmulq_n_f32(sb, rows[r].qd[b]);
                    acc_f[g][r] = vfmaq_f32(acc_f[g][r], vcvtq_f32_s32(s), sq);
                }
            }
        }
        store_scores<R, 2 * G>(rows, acc_f, j, nt - j < 8 * G ? nt - j : 8 * G, scale);
    }
}

// Columns e0 .. e0 + 4C - 1 of R rows' out += sum_j p_j v_j over the tile's nt positions (rows
// v0 + j * d of v) in position order, kept in C x R registers: no load and store of out per
// position, each value vector loaded and widened once for all R rows, and each column's sum in
// the same order as one at a time. Pairs of column vectors come from one load8 (C even, e0 a
// multiple of 8).
template <int R, int C, typename T>
QE_NEON_INLINE void weigh(Row* rows, const T* v, int64_t v0, int64_t d, int64_t e0, int64_t nt) {
    static_assert(C == 1 || C % 2 == 0, "columns go one vector or pairs at a time");
    float32x4_t o[C][R];
    for (int c = 0; c < C; ++c)
        for (int r = 0; r < R; ++r) o[c][r] = vld1q_f32(rows[r].out + e0 + 4 * c);
    for (int64_t j = 0; j < nt; ++j) {
        float32x4_t vv[C];
        if constexpr (C == 1) {
            vv[0] = load4(v, v0 + j * d + e0);
        } else {
            for (int c = 0; c < C; c += 2) {
                const float32x4x2_t pair = load8(v, v0 + j * d + e0 + 4 * c);
                vv[c] = pair.val[0];
                vv[c + 1] = pair.val[1];
            }
        }
        for (int r = 0; r < R; ++r) {
            const float pj = rows[r].p[j];
            for (int c = 0; c < C; ++c) o[c][r] = vfmaq_n_f32(o[c][r], vv[c], pj);
        }
    }
    for (int c = 0; c < C; ++c)
        for (int r = 0; r < R; ++r) vst1q_f32(rows[r].out + e0 + 4 * c, o[c][r]);
}

// ---- The weighted sum on the int8 cache in integers (kernels.h) ----------------------------
// Per tile, row and value block b the weights w_j = rint(p_j dv_jb * kWeightOne / W) in int16
// (W = max_j p_j * max_j dv_jb); each value vector is widened once to int16 for all R rows and
// its products with a row's weight go into int32 lanes by smlal, 2 per row and 8 columns,
// where the float sum took 2 FMAs after widening, converting and scaling every value vector
// (7 operations per 8 columns, shared by the rows).

// Weights w[(r * nb + b) * nt + j], units unit[r * nb + b] = W / kWeightOne, and the tile's
// value-block scales s[b * nt + j], kept by the thread from call to call (24 KiB at d = 256);
// s_max [nb] the scales' max per block.
struct Q8Scratch {
    std::vector<float> s, unit, s_max;
    std::vector<int16_t> w;
    std::vector<int32_t> wsum;  // 4-bit values: the weights' sums [r * nb + b] (kNibbles)
};
QE_NEON_INLINE Q8Scratch& q8_scratch(int64_t nb) {
    thread_local Q8Scratch x;
    if (x.s_max.size() < size_t(nb)) {
        x.s.resize(size_t(nb * kAttentionTile));
        x.w.resize(size_t(4 * nb * kAttentionTile));
        x.unit.resize(size_t(4 * nb));
        x.wsum.resize(size_t(4 * nb));
        x.s_max.resize(size_t(nb));
    }
    return x;
}

// The tile's weights (vt: its first value group; the rows see its nt positions, scores in p).
template <int R, typename VG>
QE_NEON_INLINE void q8_weights(const Row* rows, const VG* vt, int64_t nb, int64_t nt,
                               Q8Scratch& x) {
    float* s = x.s.data();
    for (int64_t b = 0; b < nb; ++b) {
        const VG* vg = vt + b;
        for (int64_t j = 0; j < nt; j += kKvGroup, vg += nb)
            std::memcpy(s + b * nt + j, vg->d, size_t(std::min<int64_t>(kKvGroup, nt - j)) * 4);
    }
    for (int64_t b = 0; b < nb; ++b) {
        float s_max = 0.0f;
        for (int64_t j = 0; j < nt; ++j) s_max = std::fmax(s_max, s[b * nt + j]);
        x.s_max[b] = s_max;
    }
    for (int r = 0; r < R; ++r) {
        const float* p = rows[r].p;
        float p_max = 0.0f;
        for (int64_t j = 0; j < nt; ++j) p_max = std::fmax(p_max, p[j]);
        for (int64_t b = 0; b < nb; ++b) {
            const float* sb = s + b * nt;
            const float w_max = p_max * x.s_max[b];
            const float inv = w_max > 0.0f ? float(kWeightOne) / w_max : 0.0f;
            x.unit[r * nb + b] = w_max / float(kWeightOne);
            int16_t* w = x.w.data() + (r * nb + b) * nt;
            int32x4_t sums = vdupq_n_s32(0);
            int64_t j = 0;
            for (; j + 4 <= nt; j += 4) {
                const float32x4_t t = vmulq_f32(vld1q_f32(p + j), vld1q_f32(sb + j));
                // Nearest, ties to even; saturating, so a NaN cannot overflow.
                const int16x4_t wj = vqmovn_s32(vcvtnq_s32_f32(vmulq_n_f32(t, inv)));
                vst1_s16(w + j, wj);
                if constexpr (kNibbles<VG>) sums = vaddw_s16(sums, wj);
            }
            int32_t sum = vaddvq_s32(sums);
            for (; j < nt; ++j) {
                const float t = std::fmin(std::fmax(p[j] * sb[j] * inv, 0.0f), float(kWeightOne));
                w[j] = int16_t(std::nearbyint(t));
                sum += w[j];
            }
            x.wsum[r * nb + b] = kNibbles<VG> ? sum : 0;
        }
    }
}

// out += unit * sum_j w_j codes_j over the tile for R rows (out already scaled by alpha),
// block by block, H halves of a block (16 columns each) per pass: 4H x R int32 chains (smlal
// waits ~4 cycles, and two pipes want ~8 in flight).
template <int R, typename VG>
QE_NEON_INLINE void weigh_q8(Row* rows, const VG* vt, int64_t d, int64_t nt) {
    constexpr int H = R <= 2 ? 2 : 1;
    const int64_t nb = d / kBlockK;
    Q8Scratch& x = q8_scratch(nb);
    q8_weights<R>(rows, vt, nb, nt, x);
    for (int64_t b = 0; b < nb; ++b) {
        for (int h0 = 0; h0 < 2; h0 += H) {
            int32x4_t acc[R][4 * H];
            for (int r = 0; r < R; ++r)
                for (int c = 0; c < 4 * H; ++c) acc[r][c] = vdupq_n_s32(0);
            // Group by group, a pointer stepping through each (no address arithmetic per
            // position).
            const VG* vg = vt + b;
            for (int64_t j = 0; j < nt; ++j) {
                if (j > 0 && j % kKvGroup == 0) vg += nb;
                int16x8_t codes[2 * H];
                for (int h = 0; h < H; ++h) {
                    const int8x16_t c = value_codes(vg->q[j % kKvGroup], h0 + h);
                    codes[2 * h] = vmovl_s8(vget_low_s8(c));
                    codes[2 * h + 1] = vmovl_high_s8(c);
                }
                for (int r = 0; r < R; ++r) {
                    const int16x8_t w = vld1q_dup_s16(x.w.data() + (r * nb + b) * nt + j);
                    for (int c = 0; c < 2 * H; ++c) {
                        acc[r][2 * c] =
                            vmlal_s16(acc[r][2 * c], vget_low_s16(codes[c]), vget_low_s16(w));
                        acc[r][2 * c + 1] = vmlal_high_s16(acc[r][2 * c + 1], codes[c], w);
                    }
                }
            }
            for (int r = 0; r < R; ++r) {
                const float u = x.unit[r * nb + b];
                const int32x4_t offset = vdupq_n_s32(8 * x.wsum[r * nb + b]);
                float* out = rows[r].out + b * kBlockK + 16 * h0;
                for (int c = 0; c < 4 * H; ++c) {
                    const int32x4_t sums =
                        kNibbles<VG> ? vsubq_s32(acc[r][c], offset) : acc[r][c];
                    vst1q_f32(out + 4 * c,
                              vfmaq_n_f32(vld1q_f32(out + 4 * c), vcvtq_f32_s32(sums), u));
                }
            }
        }
    }
}

// Tile j0 of R rows that see the same positions (j0 < n): the tile's scores, their max and
// exp, then out = (first tile ? 0 : out * exp(m_old - m_new)) + sum_j p_j v_j. Each row does the
// same operations in the same order whatever rows share the tile or the call: a query is
// independent of its company.
template <int R, typename K, typename V>
void attend_tile(Row* rows, const K* k, const V* v, int64_t j0, int64_t d, float scale) {
    // Chains (P x R, C x R) and the key and value vectors in flight fit the 32 registers.
    constexpr int kPos = R == 1 ? 8 : 4, kCols = R == 1 ? 8 : 4;
    const int64_t d4 = d & ~int64_t{3};
    const int64_t nt = rows[0].n - j0 < kAttentionTile ? rows[0].n - j0 : kAttentionTile;
    int64_t j = 0;
    if constexpr (kNibbles<K>) {
        score_q4<R>(rows, k, j0, nt, d, scale);
    } else if constexpr (kKeyGroups<K>) {
        score_q8<R>(rows, k, j0, nt, d, scale);
    } else {
        for (; j + kPos <= nt; j += kPos) score<R, kPos>(rows, k, j0, j, d, d4, scale);
        for (; j < nt; ++j) score<R, 1>(rows, k, j0, j, d, d4, scale);
    }
    for (int r = 0; r < R; ++r) {
        Row& row = rows[r];
        float mt = -INFINITY;
        for (j = 0; j < nt; ++j) mt = std::fmax(mt, row.p[j]);
        const float mn = std::fmax(row.m, mt);
        const float alpha = j0 == 0 ? 0.0f : std::exp(row.m - mn);
        row.m = mn;
        row.l = row.l * alpha + exp_sub_sum(row.p, nt, mn);
        if (j0 == 0) {
            for (int64_t e = 0; e < d; ++e) row.out[e] = 0.0f;
        } else {
            for (int64_t e = 0; e < d; ++e) row.out[e] *= alpha;
        }
    }
    if constexpr (kValueGroups<V>) {
        weigh_q8<R>(rows, v + j0 / kKvGroup * (d / kBlockK), d, nt);
    } else {
        const int64_t v0 = j0 * d;
        int64_t e = 0;
        for (; e + 4 * kCols <= d4; e += 4 * kCols) weigh<R, kCols>(rows, v, v0, d, e, nt);
        for (; e < d4; e += 4) weigh<R, 1>(rows, v, v0, d, e, nt);
        for (; e < d; ++e) {
            for (int r = 0; r < R; ++r) {
                for (j = 0; j < nt; ++j)
                    rows[r].out[e] += rows[r].p[j] * widen(v, v0 + j * d + e);
            }
        }
    }
}

// The call's query vectors (token by token, each token's n_q heads) in blocks of up to kBlock
// rows that walk the tiles together: each row of a block attends to a tile while it is in the
// L2 (K and V: 256 KiB at f16 and d = 256, plus 96 KiB of the rows' scores and outputs), so a
// tile comes from memory once per block, not once per query (tools/arm_attention_counts.sh
// measures it). A decode step's GQA group reads the cache once instead of n_q times, and a
// prefill chunk once per kBlock / n_q tokens instead of once per token and head. Row b of a
// block keeps its tile's scores in scratch row b (the scratch has a row per query).
constexpr int64_t kBlock = 48;

template <typename K, typename V>
void attention(const float* q, int64_t ldq, int64_t ldqt, int64_t n_q, int64_t n_t, const K* k,
               const V* v, int64_t n, int64_t d, float scale, float* scratch, float* out,
               int64_t ldo, int64_t ldot) {
    const int64_t ldp = attention_scratch(1, n), total = n_t * n_q;
    Row rows[kBlock];
    // The integer caches' quantized queries, a slot per row of a block.
    thread_local QueryCodes<K> codes;
    if constexpr (kKeyGroups<K>) codes.reserve(kBlock, d);
    for (int64_t first = 0; first < total; first += kBlock) {
        const int64_t count = total - first < kBlock ? total - first : kBlock;
        for (int64_t b = 0; b < count; ++b) {
            const int64_t r = (first + b) / n_q, i = (first + b) % n_q;
            rows[b] = Row{q + r * ldqt + i * ldq, out + r * ldot + i * ldo, scratch + b * ldp,
                          n - (n_t - 1 - r), -INFINITY, 0.0f};
            if constexpr (kKeyGroups<K>) codes.quantize(rows[b], b, d);
        }
        // Rows go token by token, so the block's last row sees the most positions.
        // A token's n_q heads see the same positions: they go through a tile in runs of up to
        // 4 that share each key and value load.
        for (int64_t j0 = 0; j0 < rows[count - 1].n; j0 += kAttentionTile) {
            for (int64_t b = 0; b < count;) {
                int64_t run = 1;
                while (run < 4 && b + run < count && rows[b + run].n == rows[b].n) ++run;
                if (j0 >= rows[b].n) {
                    // its tiles are done
                } else if (run == 4) {
                    attend_tile<4>(rows + b, k, v, j0, d, scale);
                } else if (run >= 2) {
                    run = 2;
                    attend_tile<2>(rows + b, k, v, j0, d, scale);
                } else {
                    attend_tile<1>(rows + b, k, v, j0, d, scale);
                }
                b += run;
            }
        }
        for (int64_t b = 0; b < count; ++b) {
            const float inv = 1.0f / rows[b].l;
            for (int64_t e = 0; e < d; ++e) rows[b].out[e] *= inv;
        }
    }
}

}  // namespace

#undef QE_ATTENTION_DOTPROD
