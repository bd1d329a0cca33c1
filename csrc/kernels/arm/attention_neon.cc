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

// Tile j0 of one row (j0 < row.n): the tile's scores, their max and exp, then
// out = (first tile ? 0 : out * exp(m_old - m_new)) + sum_j p_j v_j. The same operations in the
// same order whatever rows share the tile: a query is independent of its company.
template <typename T>
void attend_tile(Row& row, const T* k, const T* v, int64_t j0, int64_t d, float scale) {
    const int64_t d4 = d & ~int64_t{3};
    const float* qi = row.q;
    float* p = row.p;
    float* oi = row.out;
    const int64_t nt = row.n - j0 < kAttentionTile ? row.n - j0 : kAttentionTile;
    float mt = -INFINITY;
    for (int64_t j = 0; j < nt; ++j) {
        const int64_t kj = (j0 + j) * d;
        float32x4_t acc = vdupq_n_f32(0.0f);
        int64_t e = 0;
        for (; e < d4; e += 4) acc = vfmaq_f32(acc, vld1q_f32(qi + e), load4(k, kj + e));
        float dot = vaddvq_f32(acc);
        for (; e < d; ++e) dot += qi[e] * widen(k, kj + e);
        p[j] = dot * scale;
        mt = std::fmax(mt, p[j]);
    }
    const float mn = std::fmax(row.m, mt);
    const float alpha = j0 == 0 ? 0.0f : std::exp(row.m - mn);
    row.m = mn;
    row.l = row.l * alpha + exp_sub_sum(p, nt, mn);
    if (j0 == 0) {
        for (int64_t e = 0; e < d; ++e) oi[e] = 0.0f;
    } else {
        for (int64_t e = 0; e < d; ++e) oi[e] *= alpha;
    }
    for (int64_t jj = 0; jj < nt; ++jj) {
        const int64_t vj = (j0 + jj) * d;
        const float pj = p[jj];
        int64_t e = 0;
        for (; e < d4; e += 4)
            vst1q_f32(oi + e, vfmaq_n_f32(vld1q_f32(oi + e), load4(v, vj + e), pj));
        for (; e < d; ++e) oi[e] += pj * widen(v, vj + e);
    }
}

// The call's query vectors (token by token, each token's n_q heads) in blocks of up to kBlock
// rows that walk the tiles together: each row of a block attends to a tile while it is in the
// L2 (K and V: 256 KiB at f16 and d = 256, plus 96 KiB of the rows' scores and outputs), so a
// tile comes from memory once per block, not once per query (tools/arm_cache_traffic.sh
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
