// SPDX-License-Identifier: Apache-2.0
// Scalar reference of softmax attention over one KV head (docs/model.md §4.7 step 5), for an f16,
// f32, int8 or 4-bit KV cache (the last two's scores are integer dot products with the query in
// int16, or in int8 blocks against 4-bit keys), streaming: per tile of kAttentionTile positions
// the scores, the tile's max, then the online-softmax update (running max m and sum l per
// query; out rescaled by exp(m_old - m_new) when the max grows); out / l at the end. Scratch:
// one tile of scores per query, whatever n.
// Several tokens are attended one after the other: the definition of what a kernel that
// shares K/V tiles among them must give. attention_q8_integer_weights (and _q4_) define the
// weighted sum over the integer caches of the SIMD tables (kernels.h): int16 weights, exact
// int32 sums.
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/kernels.h"

namespace qe::ref {
namespace {

// Element i of a cache laid out row after row (i = j * d + e), as float.
inline float at(const float* c, int64_t i) {
    return c[i];
}
inline float at(const uint16_t* c, int64_t i) {
    return f16_to_f32(c[i]);
}

// The integer caches' groups (formats.h).
template <typename T>
constexpr bool kGroups = std::is_same_v<T, KeyGroupQ8> || std::is_same_v<T, ValueGroupQ8> ||
                         std::is_same_v<T, KeyGroupQ4> || std::is_same_v<T, ValueGroupQ4>;

// Element e of value row j, as float; the integer caches' from its group (formats.h).
template <typename T>
float value(const T* v, int64_t j, int64_t e, int64_t d) {
    return at(v, j * d + e);
}
template <typename G>
const G& value_block(const G* v, int64_t j, int64_t b, int64_t d) {
    return v[j / kKvGroup * (d / kBlockK) + b];
}
template <typename G>
float value_of_group(const G* v, int64_t j, int64_t e, int64_t d) {
    const G& g = value_block(v, j, e / kBlockK, d);
    const int l = int(j % kKvGroup);
    return g.d[l] * float(value_code(g, l, int(e % kBlockK)));
}
float value(const ValueGroupQ8* v, int64_t j, int64_t e, int64_t d) {
    return value_of_group(v, j, e, d);
}
float value(const ValueGroupQ4* v, int64_t j, int64_t e, int64_t d) {
    return value_of_group(v, j, e, d);
}

// The query's dot product with key row j: in float against f16 and f32 keys; against the
// integer caches' keys (q8k16, q4k16x4) the query is rounded to codes qc, each block's
// products summed exactly in integers and scaled by the block's scale, the blocks summed in
// order. Against int8 keys the codes are int16 with one scale qs per row (quantize_row_q16),
// applied to the sum; against 4-bit keys int8 with a scale per block (quantize_query_q4), and
// each block's scale is the key's times the query's.
struct Query {
    const float* q;
    std::vector<int16_t> qc;
    float qs = 1.0f;
    std::vector<float> qd;  // 4-bit keys: the blocks' scales
};
template <typename T>
float dot(const Query& query, const T* k, int64_t j, int64_t d) {
    float total = 0.0f;
    for (int64_t e = 0; e < d; ++e) total += query.q[e] * at(k, j * d + e);
    return total;
}
template <typename G>
float dot_groups(const Query& query, const G* k, int64_t j, int64_t d) {
    const int64_t nb = d / kBlockK;
    const int l = int(j % kKvGroup);
    float total = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        const G& kb = k[j / kKvGroup * nb + b];
        int32_t sum = 0;
        for (int e = 0; e < kBlockK; ++e)
            sum += int32_t(query.qc[b * kBlockK + e]) * key_code(kb, l, e);
        const float scale = query.qd.empty() ? kb.d[l] : kb.d[l] * query.qd[size_t(b)];
        total += scale * float(sum);
    }
    return total * query.qs;
}
float dot(const Query& query, const KeyGroupQ8* k, int64_t j, int64_t d) {
    return dot_groups(query, k, j, d);
}
float dot(const Query& query, const KeyGroupQ4* k, int64_t j, int64_t d) {
    return dot_groups(query, k, j, d);
}

// The query's codes and scales for keys of type K.
template <typename K>
void quantize_query(Query& query, int64_t d) {
    query.qc.resize(size_t(d));
    if constexpr (std::is_same_v<K, KeyGroupQ4>) {
        std::vector<int8_t> codes(static_cast<size_t>(d));
        std::vector<int32_t> sums(static_cast<size_t>(d / kBlockK));
        query.qd.resize(static_cast<size_t>(d / kBlockK));
        quantize_query_q4(query.q, d, codes.data(), query.qd.data(), sums.data());
        query.qc.assign(codes.begin(), codes.end());
    } else {
        query.qs = quantize_row_q16(query.q, query.qc.data(), d);
    }
}

// out += sum_j p_j v[j0 + j] over a tile of an integer cache, in integers: per value block b
// the weights p_j * dv_jb rounded to int16 against the bound W = max_j p_j * max_j dv_jb
// (w_j = rint(p_j * dv_jb * kWeightOne / W)), their products with the codes summed exactly
// in int32, then scaled by W / kWeightOne.
template <typename G>
void weigh_integers(const float* p, const G* v, int64_t j0, int64_t nt, int64_t d, float* out) {
    const int64_t nb = d / kBlockK;
    float p_max = 0.0f;
    for (int64_t j = 0; j < nt; ++j) p_max = std::fmax(p_max, p[j]);
    for (int64_t b = 0; b < nb; ++b) {
        float s_max = 0.0f;
        for (int64_t j = j0; j < j0 + nt; ++j)
            s_max = std::fmax(s_max, value_block(v, j, b, d).d[j % kKvGroup]);
        const float w_max = p_max * s_max;
        const float inv = w_max > 0.0f ? float(kWeightOne) / w_max : 0.0f;
        int32_t sum[kBlockK] = {};
        for (int64_t j = 0; j < nt; ++j) {
            const G& vb = value_block(v, j0 + j, b, d);
            const int l = int((j0 + j) % kKvGroup);
            // Within [0, kWeightOne] but for a NaN, which the clamp keeps from the conversion.
            const float t = std::fmin(std::fmax(p[j] * vb.d[l] * inv, 0.0f), float(kWeightOne));
            const auto w = int32_t(std::nearbyint(t));
            for (int e = 0; e < kBlockK; ++e) sum[e] += w * value_code(vb, l, e);
        }
        const float unit = w_max / float(kWeightOne);
        for (int e = 0; e < kBlockK; ++e) out[b * kBlockK + e] += unit * float(sum[e]);
    }
}

template <bool kIntegerWeights = false, typename K, typename V>
void attend(const float* q, int64_t ldq, int64_t n_q, const K* k, const V* v, int64_t n, int64_t d,
            float scale, float* scratch, float* out, int64_t ldo) {
    for (int64_t i = 0; i < n_q; ++i) {
        const float* qi = q + i * ldq;
        Query query{qi, {}, 1.0f, {}};
        if constexpr (kGroups<K>) quantize_query<K>(query, d);
        float* p = scratch + i * (n < kAttentionTile ? n : kAttentionTile);
        float* oi = out + i * ldo;
        for (int64_t e = 0; e < d; ++e) oi[e] = 0.0f;
        float m = -INFINITY, l = 0.0f;
        for (int64_t j0 = 0; j0 < n; j0 += kAttentionTile) {
            const int64_t nt = n - j0 < kAttentionTile ? n - j0 : kAttentionTile;
            float mt = -INFINITY;
            for (int64_t j = 0; j < nt; ++j) {
                p[j] = dot(query, k, j0 + j, d) * scale;
                mt = std::fmax(mt, p[j]);
            }
            const float mn = std::fmax(m, mt);
            const float alpha = std::exp(m - mn);  // 0 on the first tile (m = -inf)
            m = mn;
            float sum = 0.0f;
            for (int64_t j = 0; j < nt; ++j) {
                p[j] = std::exp(p[j] - m);
                sum += p[j];
            }
            l = l * alpha + sum;
            for (int64_t e = 0; e < d; ++e) oi[e] *= alpha;
            if constexpr (kIntegerWeights) {
                weigh_integers(p, v, j0, nt, d, oi);
            } else {
                for (int64_t j = 0; j < nt; ++j) {
                    for (int64_t e = 0; e < d; ++e) oi[e] += p[j] * value(v, j0 + j, e, d);
                }
            }
        }
        const float inv = 1.0f / l;
        for (int64_t e = 0; e < d; ++e) oi[e] *= inv;
    }
}

template <bool kIntegerWeights = false, typename K, typename V>
void attention(const float* q, int64_t ldq, int64_t ldqt, int64_t n_q, int64_t n_t, const K* k,
               const V* v, int64_t n, int64_t d, float scale, float* scratch, float* out,
               int64_t ldo, int64_t ldot) {
    for (int64_t r = 0; r < n_t; ++r) {
        attend<kIntegerWeights>(q + r * ldqt, ldq, n_q, k, v, n - (n_t - 1 - r), d, scale,
                                scratch, out + r * ldot, ldo);
    }
}

}  // namespace

#include "kernels/attention_entries_inl.h"

void attention_q8_integer_weights(const float* q, int64_t ldq, int64_t ldqt, int64_t n_q,
                                  int64_t n_t, const KeyGroupQ8* k, const ValueGroupQ8* v,
                                  int64_t n, int64_t d, float scale, float* scratch, float* out,
                                  int64_t ldo, int64_t ldot) {
    attention<true>(q, ldq, ldqt, n_q, n_t, k, v, n, d, scale, scratch, out, ldo, ldot);
}

void attention_q4_integer_weights(const float* q, int64_t ldq, int64_t ldqt, int64_t n_q,
                                  int64_t n_t, const KeyGroupQ4* k, const ValueGroupQ4* v,
                                  int64_t n, int64_t d, float scale, float* scratch, float* out,
                                  int64_t ldo, int64_t ldot) {
    attention<true>(q, ldq, ldqt, n_q, n_t, k, v, n, d, scale, scratch, out, ldo, ldot);
}

}  // namespace qe::ref
