// SPDX-License-Identifier: Apache-2.0
// NEON softmax attention of a call's queries over one KV head's cache (f16 by default, f32
// optional, or int8): scores by 4-lane dot products over the head dimension, streaming over
// tiles of kAttentionTile positions with an online softmax (kernels.h): a tile's scores, their
// max and exp_f32x4, then out = out * exp(m_old - m_new) + sum_j p_j v_j; out / sum at the end.
// The queries walk the tiles in blocks, so each tile is read from memory once per block. f16
// keys and values are widened exactly with fcvtl (ARMv8.0); no fp16 arithmetic, so long contexts
// cannot overflow a half-precision sum.
#include <arm_neon.h>

#include <cmath>
#include <cstring>

#include "kernels/arm/neon_inl.h"

namespace qe::neon {
namespace {

// Elements i..i+3 (or i) of a cache laid out row after row (i = j * d + e); a q8 row's 4
// elements never straddle a 32-wide block (d and i are multiples of 4).
QE_NEON_INLINE float32x4_t load4(const float* c, int64_t i) {
    return vld1q_f32(c + i);
}
QE_NEON_INLINE float32x4_t load4(const uint16_t* c, int64_t i) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(c + i)));
}
QE_NEON_INLINE float32x4_t load4(const BlockQ8A* c, int64_t i) {
    const BlockQ8A& b = c[i / kBlockK];
    int32_t word;
    std::memcpy(&word, b.q + i % kBlockK, 4);
    const int16x4_t w16 = vget_low_s16(vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(word))));
    return vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(w16)), b.d);
}
// Elements i..i+7 as two load4's, with one load and one widening for all eight (i a multiple
// of 8, so a q8 row's eight never straddle a block); the same values, bit for bit.
QE_NEON_INLINE float32x4x2_t load8(const float* c, int64_t i) {
    return float32x4x2_t{{vld1q_f32(c + i), vld1q_f32(c + i + 4)}};
}
QE_NEON_INLINE float32x4x2_t load8(const uint16_t* c, int64_t i) {
    const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(c + i));
    return float32x4x2_t{{vcvt_f32_f16(vget_low_f16(h)), vcvt_high_f32_f16(h)}};
}
QE_NEON_INLINE float32x4x2_t load8(const BlockQ8A* c, int64_t i) {
    // i >= 0: unsigned, the block and offset are a shift and a mask.
    const BlockQ8A& b = c[uint64_t(i) / kBlockK];
    const int16x8_t w16 = vmovl_s8(vld1_s8(b.q + uint64_t(i) % kBlockK));
    return float32x4x2_t{{vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(w16))), b.d),
                          vmulq_n_f32(vcvtq_f32_s32(vmovl_high_s16(w16)), b.d)}};
}
QE_NEON_INLINE float widen(const float* c, int64_t i) {
    return c[i];
}
QE_NEON_INLINE float widen(const uint16_t* c, int64_t i) {
    return f16_to_f32(c[i]);
}
QE_NEON_INLINE float widen(const BlockQ8A* c, int64_t i) {
    const BlockQ8A& b = c[i / kBlockK];
    return b.d * float(b.q[i % kBlockK]);
}

// One query vector of a call: q [d], out [d], the positions it sees, its scratch row p for a
// tile's scores, and its running softmax max m and sum l.
struct Row {
    const float* q;
    float* out;
    float* p;
    int64_t n;
    float m, l;
};

// Scores of positions j .. j + P - 1 (rows kj = j * d of k) against one query:
// p[i] = scale * q . k[j + i]. P independent FMA chains: one chain waits ~4 cycles per FMA on
// an A76 and its two pipes need ~8 in flight. Each dot sums its lanes in the same order as
// with P = 1, so the bits do not depend on P.
template <int P, typename T>
QE_NEON_INLINE void score_rows(const float* qi, const T* k, int64_t kj, int64_t d, int64_t d4,
                               float scale, float* p) {
    float32x4_t acc[P];
    for (int i = 0; i < P; ++i) acc[i] = vdupq_n_f32(0.0f);
    int64_t e = 0;
    for (; e + 8 <= d4; e += 8) {
        const float32x4_t q0 = vld1q_f32(qi + e), q1 = vld1q_f32(qi + e + 4);
        for (int i = 0; i < P; ++i) {
            const float32x4x2_t kv = load8(k, kj + i * d + e);
            acc[i] = vfmaq_f32(vfmaq_f32(acc[i], q0, kv.val[0]), q1, kv.val[1]);
        }
    }
    if (e < d4) {
        const float32x4_t qv = vld1q_f32(qi + e);
        for (int i = 0; i < P; ++i) acc[i] = vfmaq_f32(acc[i], qv, load4(k, kj + i * d + e));
    }
    for (int i = 0; i < P; ++i) {
        float dot = vaddvq_f32(acc[i]);
        for (int64_t t = d4; t < d; ++t) dot += qi[t] * widen(k, kj + i * d + t);
        p[i] = dot * scale;
    }
}

// Columns e0 .. e0 + 4C - 1 of out += sum_j p_j v_j over the tile's nt positions (rows
// v0 + j * d of v) in position order, kept in C registers: no load and store of out per
// position, C independent chains, and each column's sum in the same order as one at a time.
// Pairs of column vectors come from one load8 (C even, e0 a multiple of 8).
template <int C, typename T>
QE_NEON_INLINE void weigh_cols(float* oi, const T* v, int64_t v0, int64_t d, int64_t e0,
                               const float* p, int64_t nt) {
    static_assert(C == 1 || C % 2 == 0, "columns go one vector or pairs at a time");
    float32x4_t o[C];
    for (int c = 0; c < C; ++c) o[c] = vld1q_f32(oi + e0 + 4 * c);
    for (int64_t j = 0; j < nt; ++j) {
        const float pj = p[j];
        if constexpr (C == 1) {
            o[0] = vfmaq_n_f32(o[0], load4(v, v0 + j * d + e0), pj);
        } else {
            for (int c = 0; c < C; c += 2) {
                const float32x4x2_t vv = load8(v, v0 + j * d + e0 + 4 * c);
                o[c] = vfmaq_n_f32(o[c], vv.val[0], pj);
                o[c + 1] = vfmaq_n_f32(o[c + 1], vv.val[1], pj);
            }
        }
    }
    for (int c = 0; c < C; ++c) vst1q_f32(oi + e0 + 4 * c, o[c]);
}

// Tile j0 of one row (j0 < row.n): the tile's scores, their max and exp, then
// out = (first tile ? 0 : out * exp(m_old - m_new)) + sum_j p_j v_j. The same operations in the
// same order whatever rows share the tile: a query is independent of its company.
template <typename T>
void attend_tile(Row& row, const T* k, const T* v, int64_t j0, int64_t d, float scale) {
    constexpr int kPos = 8, kCols = 8;
    const int64_t d4 = d & ~int64_t{3};
    const float* qi = row.q;
    float* p = row.p;
    float* oi = row.out;
    const int64_t nt = row.n - j0 < kAttentionTile ? row.n - j0 : kAttentionTile;
    int64_t j = 0;
    for (; j + kPos <= nt; j += kPos) score_rows<kPos>(qi, k, (j0 + j) * d, d, d4, scale, p + j);
    for (; j < nt; ++j) score_rows<1>(qi, k, (j0 + j) * d, d, d4, scale, p + j);
    float mt = -INFINITY;
    for (j = 0; j < nt; ++j) mt = std::fmax(mt, p[j]);
    const float mn = std::fmax(row.m, mt);
    const float alpha = j0 == 0 ? 0.0f : std::exp(row.m - mn);
    row.m = mn;
    row.l = row.l * alpha + exp_sub_sum(p, nt, mn);
    if (j0 == 0) {
        for (int64_t e = 0; e < d; ++e) oi[e] = 0.0f;
    } else {
        for (int64_t e = 0; e < d; ++e) oi[e] *= alpha;
    }
    const int64_t v0 = j0 * d;
    int64_t e = 0;
    for (; e + 4 * kCols <= d4; e += 4 * kCols) weigh_cols<kCols>(oi, v, v0, d, e, p, nt);
    for (; e < d4; e += 4) weigh_cols<1>(oi, v, v0, d, e, p, nt);
    for (; e < d; ++e) {
        for (j = 0; j < nt; ++j) oi[e] += p[j] * widen(v, v0 + j * d + e);
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

template <typename T>
void attention(const float* q, int64_t ldq, int64_t ldqt, int64_t n_q, int64_t n_t, const T* k,
               const T* v, int64_t n, int64_t d, float scale, float* scratch, float* out,
               int64_t ldo, int64_t ldot) {
    const int64_t ldp = attention_scratch(1, n), total = n_t * n_q;
    Row rows[kBlock];
    for (int64_t first = 0; first < total; first += kBlock) {
        const int64_t count = total - first < kBlock ? total - first : kBlock;
        for (int64_t b = 0; b < count; ++b) {
            const int64_t r = (first + b) / n_q, i = (first + b) % n_q;
            rows[b] = Row{q + r * ldqt + i * ldq, out + r * ldot + i * ldo, scratch + b * ldp,
                          n - (n_t - 1 - r), -INFINITY, 0.0f};
        }
        // Rows go token by token, so the block's last row sees the most positions.
        for (int64_t j0 = 0; j0 < rows[count - 1].n; j0 += kAttentionTile) {
            for (int64_t b = 0; b < count; ++b) {
                if (j0 < rows[b].n) attend_tile(rows[b], k, v, j0, d, scale);
            }
        }
        for (int64_t b = 0; b < count; ++b) {
            const float inv = 1.0f / rows[b].l;
            for (int64_t e = 0; e < d; ++e) rows[b].out[e] *= inv;
        }
    }
}

}  // namespace

#include "kernels/attention_entries_inl.h"

}  // namespace qe::neon
