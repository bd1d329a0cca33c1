// SPDX-License-Identifier: Apache-2.0
// Attention over one KV head (f16, f32, int8 or 4-bit cache) on float vectors (the integer
// caches' on integer ones), shared by the avx2 (8 lanes) and avx512_vnni (16 lanes) tables. Included
// INSIDE the ISA namespace of a translation unit compiled with that ISA's flags (after
// <immintrin.h>, <cmath>, <cstring>, <type_traits>, <vector>, kernels.h and avx2_inl.h), with
// QE_ATTENTION_LANES defined as 8 or 16 (and for 8, QE_ATTENTION_AVX_VNNI where the file has
// AVX-VNNI), which it undefines; so each ISA keeps its own copy (STYLE.md §5).
//
// The query vectors of a call (n_q heads of n_t consecutive tokens) go in runs of up to kRun
// rows that share every key and value load: scores are kRun dot products per key row (one K
// load and widening for all), the output accumulates kRun x kLanes columns per value row in
// registers (kRun accumulators, a value and a broadcast: 14 of AVX2's 16 registers). So a
// prefill chunk reads each K/V tile once per run instead of once per query token (the int8
// cache's scores and weighted sum go in integers: their own section). Streaming
// over tiles of kAttentionTile positions with an online softmax (kernels.h): a tile's scores,
// their max and exp, then out = out * exp(m_old - m_new) + sum_j p_j v_j; out / sum at the end.
//
// Rows of a run see different numbers of positions (causal): a run only holds rows with the
// same number of tiles, and in the last tile each row stops at its own position. A row's
// arithmetic (its dot products' lane order, exp, sums in position order) is the same whatever
// run it is in: the contract's bit-for-bit independence of the company a query keeps.

#if QE_ATTENTION_LANES == 8
using Vec = __m256;
#define QE_V(op) _mm256_##op
#elif QE_ATTENTION_LANES == 16
using Vec = __m512;
#define QE_V(op) _mm512_##op
#else
#error "attention_inl.h: define QE_ATTENTION_LANES as 8 or 16 before including it"
#endif

constexpr int kLanes = QE_ATTENTION_LANES, kRun = 12;

static inline float vsum(Vec v) {
#if QE_ATTENTION_LANES == 8
    return x86::hsum(v);
#else
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return x86::hsum(_mm256_add_ps(_mm512_castps512_ps256(v), hi));  // AVX-512F only
#endif
}

// vsum of v[0..3] into out[0..3] with the same pairs added in the same order (lane i with
// i + 8, then i + 4, i + 2, i + 1), so bit for bit vsum's: the four trees share their shuffles
// and adds (11 instructions on avx2, 13 on avx512 instead of 24 and 32). Horizontal sums
// were a third of a prefill run's issue slots.
static inline void vsum4(const Vec* v, float* out) {
#if QE_ATTENTION_LANES == 8
    // [b0 | b1], [b2 | b3]: b_k = lo128(v_k) + hi128(v_k).
    const __m256 b01 = _mm256_add_ps(_mm256_permute2f128_ps(v[0], v[1], 0x20),
                                     _mm256_permute2f128_ps(v[0], v[1], 0x31));
    const __m256 b23 = _mm256_add_ps(_mm256_permute2f128_ps(v[2], v[3], 0x20),
                                     _mm256_permute2f128_ps(v[2], v[3], 0x31));
    // c_k = b_k[0, 1] + b_k[2, 3]: [c0 c2 | c1 c3].
    const __m256 c = _mm256_add_ps(_mm256_shuffle_ps(b01, b23, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm256_shuffle_ps(b01, b23, _MM_SHUFFLE(3, 2, 3, 2)));
    // c_k[0] + c_k[1] in lanes 0 (k = 0), 2 (2), 4 (1), 6 (3).
    alignas(32) float r[8];
    _mm256_store_ps(r, _mm256_add_ps(c, _mm256_shuffle_ps(c, c, _MM_SHUFFLE(2, 3, 0, 1))));
    out[0] = r[0];
    out[1] = r[4];
    out[2] = r[2];
    out[3] = r[6];
#else
    // [a0 | a1], [a2 | a3] (8 lanes each): a_k = lo256(v_k) + hi256(v_k).
    const __m512 a01 = _mm512_add_ps(_mm512_shuffle_f32x4(v[0], v[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                     _mm512_shuffle_f32x4(v[0], v[1], _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 a23 = _mm512_add_ps(_mm512_shuffle_f32x4(v[2], v[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                     _mm512_shuffle_f32x4(v[2], v[3], _MM_SHUFFLE(3, 2, 3, 2)));
    // [b0 | b1 | b2 | b3] (4 lanes each): b_k = lo128(a_k) + hi128(a_k).
    const __m512 b = _mm512_add_ps(_mm512_shuffle_f32x4(a01, a23, _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(a01, a23, _MM_SHUFFLE(3, 1, 3, 1)));
    // Then, in each 128-bit lane, (b[0] + b[2]) + (b[1] + b[3]) as hsum's movehl and movehdup.
    const __m512 c = _mm512_add_ps(b, _mm512_shuffle_ps(b, b, _MM_SHUFFLE(3, 2, 3, 2)));
    alignas(64) float r[16];
    _mm512_store_ps(r, _mm512_add_ps(c, _mm512_movehdup_ps(c)));
    out[0] = r[0];
    out[1] = r[4];
    out[2] = r[8];
    out[3] = r[12];
#endif
}

// Elements i..i+kLanes-1 (or i) of a float or f16 cache laid out row after row (i = j * d + e).
static inline Vec vload(const float* c, int64_t i) {
    return QE_V(loadu_ps)(c + i);
}
#if QE_ATTENTION_LANES == 8
static inline Vec vload(const uint16_t* c, int64_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + i)));
}
#else
static inline Vec vload(const uint16_t* c, int64_t i) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + i)));
}
#endif
static inline float load1(const float* c, int64_t i) {
    return c[i];
}
static inline float load1(const uint16_t* c, int64_t i) {
    return f16_to_f32(c[i]);
}

// Where element i (or row j) of a cache lies (prefetches never fault, so a fetch to an inexact
// end does no harm). Fetches go to L2 (T1), as the matmuls' do: a tile's K and V
// (256 KiB at f16, d = 256) are 8 times L1, and requests into L1 wait on its few miss buffers:
// a 64k decode call streamed 11 GB/s with T0, ~18 with T1.
static inline const void* element_at(const float* c, int64_t i) {
    return c + i;
}
static inline const void* element_at(const uint16_t* c, int64_t i) {
    return c + i;
}
// The integer caches' groups hold sizeof(G) / 16 bytes per 32 values, as rows of blocks
// would, so a position's share of its group lies where its row would (exact at group
// boundaries: what fetches use).
template <typename G>
static inline const void* group_element_at(const G* c, int64_t i) {
    return reinterpret_cast<const char*>(c) + uint64_t(i) / kBlockK * (sizeof(G) / kKvGroup);
}
static inline const void* element_at(const KeyGroupQ8* c, int64_t i) {
    return group_element_at(c, i);
}
static inline const void* element_at(const ValueGroupQ8* c, int64_t i) {
    return group_element_at(c, i);
}
static inline const void* element_at(const KeyGroupQ4* c, int64_t i) {
    return group_element_at(c, i);
}
static inline const void* element_at(const ValueGroupQ4* c, int64_t i) {
    return group_element_at(c, i);
}
// The integer caches: their keys and values go in groups (formats.h) and in integers.
template <typename T>
constexpr bool kKeyGroups = std::is_same_v<T, KeyGroupQ8> || std::is_same_v<T, KeyGroupQ4>;
template <typename T>
constexpr bool kValueGroups = std::is_same_v<T, ValueGroupQ8> || std::is_same_v<T, ValueGroupQ4>;
template <typename T>
static inline const char* row_at(const T* c, int64_t j, int64_t d) {
    return static_cast<const char*>(element_at(c, j * d));
}

// exp(x[j] - m) in place over x [n]; returns their sum. 8 lanes on both tables: 2-4% of the
// work, not worth a second exp.
static inline float exp_sum(float* x, int64_t n, float m) {
    const __m256 mv = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 e = x86::exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv));
        _mm256_storeu_ps(x + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = x86::hsum(acc);
    for (; j < n; ++j) {
        alignas(32) float lane[8] = {x[j] - m};
        _mm256_store_ps(lane, x86::exp_ps(_mm256_load_ps(lane)));
        x[j] = lane[0];
        sum += lane[0];
    }
    return sum;
}

// The max of x [n], n >= 1 (exact in any order, so vectorized).
static inline float tile_max(const float* x, int64_t n) {
    __m256 mv = _mm256_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + j));
    float m = x86::hmax(mv);
    for (; j < n; ++j) m = x[j] > m ? x[j] : m;
    return m;
}

// One query vector: q [d], out [d], and the number of positions it sees; against the int8
// cache also the query in int16 codes qc [d] and their scale qs (quantize_row_q16); against
// the 4-bit cache in int8 codes qb [d], their scales qd and sums qsum per block [d / 32]
// (quantize_query_q4), and qs = 1. QueryCodes fills them.
struct Row {
    const float* q;
    float* out;
    int64_t n;
    const int16_t* qc = nullptr;
    float qs = 1.0f;
    const int8_t* qb = nullptr;
    const float* qd = nullptr;
    const int32_t* qsum = nullptr;
};
#include "kernels/attention_queries_inl.h"

// scale * q . k[j] for k's row starting at element kj: kLanes-wide FMAs over dv, the lanes'
// sum, the scalar tail; exactly what attend_run does per row.
template <typename T>
static inline float score1(const Row& row, const T* k, int64_t kj, int64_t d, int64_t dv,
                           float scale) {
    const float* q = row.q;
    Vec acc = QE_V(setzero_ps)();
    for (int64_t e = 0; e < dv; e += kLanes)
        acc = QE_V(fmadd_ps)(QE_V(loadu_ps)(q + e), vload(k, kj + e), acc);
    float dot = vsum(acc);
    for (int64_t e = dv; e < d; ++e) dot += q[e] * load1(k, kj + e);
    return dot * scale;
}

// Independent FMA chains: one chain per row and position (scores) or per row and column
// vector (weighted sum) waits ~4 cycles per FMA, and two FMA ports need ~8 chains in flight.
// A run of R rows alone gives R; for small runs (decode: R = 4, one GQA group) score_pass
// takes P key rows at once and weigh_pass C column vectors at once, as many as the registers
// hold (16 vectors on avx2, 32 on avx512). Every result is the same sum in the same order
// as with P = C = 1: only independent work is interleaved, so the bits do not change.
constexpr int kRegs = kLanes == 16 ? 32 : 16;

// Scores of R rows against key rows j .. j + P - 1 (positions of the tile, all seen by every
// row): p[r * ldp + i] = scale * q_r . k[j + i], i < P; the same lane order and tail as score1.
// With P > 1 (decode-sized runs) it also fetches pf_lines cache lines from pf, a few per step:
// spread out, the fetches keep memory busy while the FMAs run (all at once they wait on the
// miss buffers: a 64k decode step took 5-10 % longer); runs of 8 or more rows (P = 1) are
// bound by their FMAs, and the bookkeeping would cost them 2-5 %.
template <int R, int P, typename T>
static inline void score_pass(const Row* rows, const T* k, int64_t j, int64_t d, int64_t dv,
                              float scale, float* p, int64_t ldp, const char* pf = nullptr,
                              int64_t pf_lines = 0) {
    Vec acc[P][R];
    for (int i = 0; i < P; ++i)
        for (int r = 0; r < R; ++r) acc[i][r] = QE_V(setzero_ps)();
    // pf_lines over dv / kLanes steps without a division: step s ends at line (s + 1) *
    // pf_lines / steps, tracked as a remainder.
    const int64_t steps = dv / kLanes;
    int64_t owed = 0;
    for (int64_t e = 0; e < dv; e += kLanes) {
        if constexpr (P > 1) {
            for (owed += pf_lines; owed >= steps; owed -= steps, pf += 64)
                _mm_prefetch(pf, _MM_HINT_T1);
        }
        // Each key vector and each query vector is loaded once per e: zmm loads issue one
        // per cycle on 256-bit machines (Zen 4), and R + 1 loads per R FMAs bound the pass.
        Vec kv[P];
        for (int i = 0; i < P; ++i) kv[i] = vload(k, (j + i) * d + e);
        for (int r = 0; r < R; ++r) {
            const Vec qv = QE_V(loadu_ps)(rows[r].q + e);
            for (int i = 0; i < P; ++i) acc[i][r] = QE_V(fmadd_ps)(qv, kv[i], acc[i][r]);
        }
    }
    float dots[P * R];
    const Vec* flat = &acc[0][0];
    int f = 0;
    for (; f + 4 <= P * R; f += 4) vsum4(flat + f, dots + f);
    for (; f < P * R; ++f) dots[f] = vsum(flat[f]);
    for (int i = 0; i < P; ++i) {
        for (int r = 0; r < R; ++r) {
            float dot = dots[i * R + r];
            for (int64_t e = dv; e < d; ++e) dot += rows[r].q[e] * load1(k, (j + i) * d + e);
            p[r * ldp + i] = dot * scale;
        }
    }
}

// The scores of a tile (j0: its first position) for R rows: p[r * ldp + j] for j < nt[r]
// (nt_lo: every row's), key row by key row, fetching the V rows of the positions scored.
template <int R, typename T>
static inline void score_tile(const Row* rows, const T* k, const T* v, int64_t j0, int64_t nt_lo,
                              const int64_t* nt, int64_t d, float scale, float* p, int64_t ldp) {
    // Key rows per score pass: >= 8 chains where the accumulators, loads and a broadcast fit
    // in the registers (a decode group on avx512: 4 key rows, so each query load feeds 4
    // FMAs). Runs of 8 or more already have their chains (2 key rows measured 5-8 % slower
    // for runs of 12).
    constexpr int kPos = R >= 8 ? 1 : 4 * R + 5 <= kRegs ? 4 : 2 * R + 3 <= kRegs ? 2 : 1;
    const int64_t dv = d & ~int64_t{kLanes - 1};
    int64_t js = 0;
    for (; js + kPos <= nt_lo; js += kPos) {
        // The weighted sum reads V in column blocks, rows 512 bytes apart (f16, d = 256):
        // fetch each scored position's V row now, so the tile is in cache by then.
        const char* vrows = row_at(v, j0 + js, d);
        const int64_t lines = (row_at(v, j0 + js + kPos, d) - vrows + 63) / 64;
        if constexpr (kPos == 1) {
            for (int64_t i = 0; i < lines; ++i) _mm_prefetch(vrows + 64 * i, _MM_HINT_T1);
        }
        score_pass<R, kPos>(rows, k, j0 + js, d, dv, scale, p + js, ldp, vrows, lines);
    }
    for (; js < nt_lo; ++js) score_pass<R, 1>(rows, k, j0 + js, d, dv, scale, p + js, ldp);
    for (; js < nt[R - 1]; ++js) {
        for (int r = 0; r < R; ++r) {
            if (js >= nt[r]) continue;
            p[r * ldp + js] = score1(rows[r], k, (j0 + js) * d, d, dv, scale);
        }
    }
}

// Columns e0 .. e0 + C * kLanes - 1 of every row's out: (first tile ? 0 : out * alpha) +
// sum_j p_j v_j in position order, row r over its own nt[r] positions (< nt_lo: all rows').
template <int R, int C, typename T>
static inline void weigh_pass(const Row* rows, const T* v, int64_t v0j, int64_t d, int64_t e0,
                              const float* p, int64_t ldp, int64_t nt_lo, const int64_t* nt,
                              bool first, const float* alpha, const char* pf, int64_t pf_step) {
    Vec o[C][R] = {};  // all set below; gcc 12 cannot tell once prefetches join the loop
    for (int r = 0; r < R; ++r) {
        const Vec a = QE_V(set1_ps)(alpha[r]);
        for (int c = 0; c < C; ++c) {
            o[c][r] = first ? QE_V(setzero_ps)()
                            : QE_V(mul_ps)(QE_V(loadu_ps)(rows[r].out + e0 + c * kLanes), a);
        }
    }
    for (int64_t j = 0; j < nt_lo; ++j) {
        for (int64_t b = 0; b < pf_step; b += 64) _mm_prefetch(pf + j * pf_step + b, _MM_HINT_T1);
        Vec vj[C];
        for (int c = 0; c < C; ++c) vj[c] = vload(v, v0j + j * d + e0 + c * kLanes);
        for (int r = 0; r < R; ++r) {
            const Vec pr = QE_V(set1_ps)(p[r * ldp + j]);
            for (int c = 0; c < C; ++c) o[c][r] = QE_V(fmadd_ps)(pr, vj[c], o[c][r]);
        }
    }
    for (int64_t j = nt_lo; j < nt[R - 1]; ++j) {
        Vec vj[C];
        for (int c = 0; c < C; ++c) vj[c] = vload(v, v0j + j * d + e0 + c * kLanes);
        for (int r = 0; r < R; ++r) {
            if (j >= nt[r]) continue;
            const Vec pr = QE_V(set1_ps)(p[r * ldp + j]);
            for (int c = 0; c < C; ++c) o[c][r] = QE_V(fmadd_ps)(pr, vj[c], o[c][r]);
        }
    }
    for (int c = 0; c < C; ++c)
        for (int r = 0; r < R; ++r) QE_V(storeu_ps)(rows[r].out + e0 + c * kLanes, o[c][r]);
}

// ---- The integer caches in integers (kernels.h) ---------------------------------------------
// The 4-bit cache goes through the int8 cache's code: its value nibbles u are widened to the
// same lanes where they are loaded (codes8/16/32); its keys are spread to bytes (key_quads)
// and meet the query in int8 in byte dot products (dot_quads), half the int8 cache's
// instructions per key block. The nibbles stay unsigned, and the offset of q = u - 8 is
// taken once per block instead of once per load: a key block's sums lose 8 times the query
// codes' sum, and a value block's 8 times the weights' sum (the same exact int32 results).
template <typename T>
constexpr bool kNibbles = std::is_same_v<T, KeyGroupQ4> || std::is_same_v<T, ValueGroupQ4>;

// The buffers of a tile on the int8 cache, kept by the thread from call to call (134 KiB at
// d = 256). Scores of runs of 8 or more (prefill): the tile's key pairs widened to int16 (kt,
// 16 vectors per kLanes positions and block; 4-bit keys: 8 vectors of quads), its first
// `widened` positions at widened_base (null: none) valid for the block's later runs. Weighted
// sum: one value block's weights for the rows of a run (w).
struct Q8Scratch {
    struct alignas(kLanes * sizeof(int32_t)) Lanes {
        int32_t lanes[kLanes];
    };
    std::vector<Lanes> kt;  // std::vector<IVec> would drop the type's alignment
    const void* widened_base = nullptr;
    int64_t widened = 0;
    std::vector<int16_t> w;
};
static inline Q8Scratch& q8_scratch(int64_t nb) {
    thread_local Q8Scratch x;
    if (x.kt.size() < size_t(kAttentionTile / kLanes * nb * 16)) {
        x.kt.resize(size_t(kAttentionTile / kLanes * nb * 16));
        x.w.resize(size_t(kRun * kAttentionTile));
    }
    return x;
}

// -- Scores with positions in lanes: the q8k16 keys (formats.h) hold each column pair of 16
// positions in 32 bytes, so one load and one widening give a vector whose lane l holds
// position l's pair, shared by the rows of the run; per row and pair one dot_pairs (a
// broadcast of the query's two codes) adds that pair's products for all kLanes positions, a
// block's sums stay exact in int32 (kernels.h), and one convert and one FMA per row, block
// and kLanes positions scale them by the keys' scales, which lie beside the codes. Rows of
// keys along lanes took a vpmaddwd, a convert and an FMA per row, position and block, and a
// horizontal sum per score; keys stored as rows had every call transpose them first (22 % of
// an avx512 decode call at 16k, and the scales gathered 36 bytes apart).
#if QE_ATTENTION_LANES == 8
using IVec = __m256i;
static inline IVec izero() {
    return _mm256_setzero_si256();
}
// acc + per int32 lane the two products of t's int16 pair and the query's (an exact int32:
// kernels.h's bound): one vpdpwssd with AVX-VNNI. On avx2 the empty asm keeps gcc from
// reassociating a block's 16 adds into a tree whose vpmaddwd results all wait in memory (a
// run's sums spilled: 15 % slower).
static inline IVec dot_pairs(IVec acc, IVec t, int32_t pair) {
#ifdef QE_ATTENTION_AVX_VNNI
    return _mm256_dpwssd_avx_epi32(acc, t, _mm256_set1_epi32(pair));
#else
    IVec sum = _mm256_add_epi32(acc, _mm256_madd_epi16(t, _mm256_set1_epi32(pair)));
    asm("" : "+x"(sum));
    return sum;
#endif
}

// Column pair e of positions l0 .. l0 + 7 of a key group (l0: 0 or 8), widened to int16.
static inline IVec key_pairs(const KeyGroupQ8& g, int e, int l0) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g.q[e][l0])));
}
// Quad p of positions l0 .. l0 + 7 of a 4-bit key group, one position's four nibbles u
// (unsigned: kNibbles) per 32-bit lane, a byte each in element order (formats.h).
static inline IVec key_quads(const KeyGroupQ4& g, int p, int l0) {
    const IVec x =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g.q[p][l0])));
    return _mm256_and_si256(_mm256_or_si256(x, _mm256_slli_epi32(x, 12)),
                            _mm256_set1_epi32(0x0f0f0f0f));
}
// acc + per 32-bit lane the products of t's four unsigned bytes with the quad's four int8
// codes: one vpdpbusd with AVX-VNNI. On avx2 vpmaddubsw's int16 pair sums, added in int16
// across a block's 8 quads (at most 8 * 2 * 15 * 127 = 30480 per lane, no saturation) and
// widened once per block by quad_sums.
static inline IVec dot_quads(IVec acc, IVec t, int32_t quad) {
#ifdef QE_ATTENTION_AVX_VNNI
    return _mm256_dpbusd_avx_epi32(acc, t, _mm256_set1_epi32(quad));
#else
    IVec sum = _mm256_add_epi16(acc, _mm256_maddubs_epi16(t, _mm256_set1_epi32(quad)));
    asm("" : "+x"(sum));
    return sum;
#endif
}
static inline IVec quad_sums(IVec acc) {
#ifdef QE_ATTENTION_AVX_VNNI
    return acc;
#else
    return _mm256_madd_epi16(acc, _mm256_set1_epi16(1));
#endif
}

// The first m lanes of f at p.
static inline void store_first(float* p, Vec f, int m) {
    if (m == 8) {
        _mm256_storeu_ps(p, f);
        return;
    }
    alignas(32) float lane[8];
    _mm256_store_ps(lane, f);
    std::memcpy(p, lane, size_t(m) * sizeof(float));
}
#else
using IVec = __m512i;
static inline IVec izero() {
    return _mm512_setzero_si512();
}
static inline IVec dot_pairs(IVec acc, IVec t, int32_t pair) {
    return _mm512_dpwssd_epi32(acc, t, _mm512_set1_epi32(pair));
}

// Column pair e of the group's 16 positions (l0 = 0), widened to int16.
static inline IVec key_pairs(const KeyGroupQ8& g, int e, int) {
    return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.q[e])));
}
static inline IVec key_quads(const KeyGroupQ4& g, int p, int) {
    const IVec x =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.q[p])));
    return _mm512_ternarylogic_epi32(x, _mm512_slli_epi32(x, 12), _mm512_set1_epi32(0x0f0f0f0f),
                                     0xa8);  // (a | b) & c
}
static inline IVec dot_quads(IVec acc, IVec t, int32_t quad) {
    return _mm512_dpbusd_epi32(acc, t, _mm512_set1_epi32(quad));
}
static inline IVec quad_sums(IVec acc) {
    return acc;
}

static inline void store_first(float* p, Vec f, int m) {
    _mm512_mask_storeu_ps(p, __mmask16((1u << m) - 1), f);
}
#endif

// The scores of R rows against kLanes positions of a key group (kg: its nb blocks; l0: the
// first position's place in it; runs of 8 or more read the keys widened at `wide`),
// unscaled by the rows' qs, into f [R]: per block the int32 sums over the block's 16 column
// pairs (8 quads of 4-bit keys), converted and scaled by the positions' block scales (times
// the query's block scale for 4-bit keys);
// fetching pf_lines cache lines from pf meanwhile, a few per block. A function of its own,
// the columns unrolled: inlined into score_tile, unrolled or not, an avx512 decode call
// measured 2 % slower.
template <int R, typename KG>
__attribute__((noinline)) static void group_scores(const KG* kg, int l0, int64_t nb,
                                                   const Row* rows, Vec* f, const char* pf,
                                                   int64_t pf_lines, const IVec* wide) {
    Vec acc_f[R];
    for (int r = 0; r < R; ++r) acc_f[r] = QE_V(setzero_ps)();
    int64_t owed = 0;
    for (int64_t b = 0; b < nb; ++b) {
        for (owed += pf_lines; owed >= nb; owed -= nb, pf += 64) _mm_prefetch(pf, _MM_HINT_T1);
        IVec acc[R];
        for (int r = 0; r < R; ++r) acc[r] = izero();
        if constexpr (kNibbles<KG>) {
#pragma GCC unroll 8
            for (int p = 0; p < 8; ++p) {
                const IVec tp = R >= 8 ? wide[b * 8 + p] : key_quads(kg[b], p, l0);
                for (int r = 0; r < R; ++r) {
                    int32_t quad;
                    std::memcpy(&quad, rows[r].qb + b * kBlockK + 4 * p, sizeof quad);
                    acc[r] = dot_quads(acc[r], tp, quad);
                }
            }
            for (int r = 0; r < R; ++r) {
                const IVec offset = QE_V(set1_epi32)(-8 * rows[r].qsum[b]);
                acc[r] = QE_V(add_epi32)(quad_sums(acc[r]), offset);
            }
        } else {
#pragma GCC unroll 16
            for (int e = 0; e < 16; ++e) {
                const IVec te = R >= 8 ? wide[b * 16 + e] : key_pairs(kg[b], e, l0);
                for (int r = 0; r < R; ++r) {
                    int32_t pair;
                    std::memcpy(&pair, rows[r].qc + b * kBlockK + 2 * e, sizeof pair);
                    acc[r] = dot_pairs(acc[r], te, pair);
                }
            }
        }
        const Vec sb = QE_V(loadu_ps)(kg[b].d + l0);
        for (int r = 0; r < R; ++r) {
            const Vec s = kNibbles<KG> ? QE_V(mul_ps)(sb, QE_V(set1_ps)(rows[r].qd[b])) : sb;
            acc_f[r] = QE_V(fmadd_ps)(QE_V(cvtepi32_ps)(acc[r]), s, acc_f[r]);
        }
    }
    for (int r = 0; r < R; ++r) f[r] = acc_f[r];
}

// score_tile on an integer cache: p[r * ldp + j] = scale * qs_r * sum_b dk_jb (qc_rb . kc_jb),
// kLanes positions at a time (a tile starts a group, so they never straddle one), every row
// to the tile's last position nt[R - 1] (a row that sees fewer gets values past its own it
// never reads), fetching the V rows of the positions scored. Runs of 8 or more (prefill)
// widen each group's pairs once per tile into the scratch for the block's later runs (up to
// 4): widening per run left a 4k prefill chunk 3-5 % slower than transposing rows had been;
// decode-sized runs widen as they go.
template <int R, typename KG, typename VG>
static void group_score_tile(const Row* rows, const KG* k, const VG* v, int64_t j0,
                             const int64_t* nt, int64_t d, float scale, float* p, int64_t ldp) {
    static_assert(kAttentionTile % kKvGroup == 0 && kKvGroup % kLanes == 0,
                  "a tile's lanes fall in whole key groups");
    const int64_t nb = d / kBlockK, n = nt[R - 1];
    const Vec sc = QE_V(set1_ps)(scale);
    Q8Scratch& x = q8_scratch(nb);
    const KG* tile = k + j0 / kKvGroup * nb;
    if (x.widened_base != tile) x.widened = 0;
    x.widened_base = R >= 8 ? tile : nullptr;
    for (int64_t g = 0; g < n; g += kLanes) {
        const int m = int(n - g < kLanes ? n - g : kLanes);
        const int64_t j = j0 + g;
        const KG* kg = k + j / kKvGroup * nb;
        const int l0 = int(j % kKvGroup);
        IVec* wide = reinterpret_cast<IVec*>(x.kt.data() + g / kLanes * nb * 16);
        if (R >= 8 && g + m > x.widened) {
            for (int64_t b = 0; b < nb; ++b) {
                if constexpr (kNibbles<KG>) {
                    for (int i = 0; i < 8; ++i) wide[b * 8 + i] = key_quads(kg[b], i, l0);
                } else {
                    for (int e = 0; e < 16; ++e) wide[b * 16 + e] = key_pairs(kg[b], e, l0);
                }
            }
            x.widened = g + m;
        }
        const char* pf = row_at(v, j, d);
        Vec f[R];
        group_scores<R>(kg, l0, nb, rows, f, pf, (row_at(v, j + m, d) - pf + 63) / 64, wide);
        for (int r = 0; r < R; ++r) {
            const Vec qs = QE_V(set1_ps)(rows[r].qs);
            store_first(p + r * ldp + g, QE_V(mul_ps)(QE_V(mul_ps)(f[r], qs), sc), m);
        }
    }
}
template <int R>
static void score_tile(const Row* rows, const KeyGroupQ8* k, const ValueGroupQ8* v, int64_t j0,
                       int64_t, const int64_t* nt, int64_t d, float scale, float* p, int64_t ldp) {
    group_score_tile<R>(rows, k, v, j0, nt, d, scale, p, ldp);
}
template <int R>
static void score_tile(const Row* rows, const KeyGroupQ4* k, const ValueGroupQ4* v, int64_t j0,
                       int64_t, const int64_t* nt, int64_t d, float scale, float* p, int64_t ldp) {
    group_score_tile<R>(rows, k, v, j0, nt, d, scale, p, ldp);
}

// -- The weighted sum in integers: per tile, row and value block b the weights w_j =
// rint(p_j dv_jb * kWeightOne / W) in int16; a block's codes at two positions j, j + 1 are
// interleaved per column and widened to int16, so one dot_pairs per row and kLanes columns
// multiplies both positions' codes by their weights and adds them to int32 sums. Per
// position, row and 32 columns that is one vpdpwssd plus a share of the interleave on avx512
// (two vpmaddwd and two adds on avx2, two vpdpwssd with AVX-VNNI), where the float sum took 2
// (4) FMAs after the widening, conversion and scaling of each value vector: those bound the
// int8 decode step on Zen 4, and half of an avx2 prefill chunk at depth.

// Position j's scale of value block vb (its block in the tile's first group; groups nb blocks
// apart). j >= 0: unsigned, the group and slot are a shift and a mask.
template <typename VG>
static inline const float* value_scales(const VG* vb, int64_t nb, int64_t j) {
    return vb[uint64_t(j) / kKvGroup * uint64_t(nb)].d + uint64_t(j) % kKvGroup;
}

// f(a, z, j) for the tile's positions j, j + 1 in pairs (j < nt_hi, even) with a, z their codes
// of value block vb, group by group: the codes of a pair lie one row apart, and pointers that
// step through a group cost the loop no address arithmetic (finding each position's group
// made an avx_vnni prefill chunk 16 % slower). A lone last position pairs with the next slot
// of its group (allocated whole), under a zero weight.
template <typename VG, typename F>
static inline void for_pairs(const VG* vb, int64_t nb, int64_t nt_hi, F f) {
    for (int64_t g0 = 0; g0 < nt_hi; g0 += kKvGroup, vb += nb) {
        const int64_t m = nt_hi - g0 < kKvGroup ? nt_hi - g0 : kKvGroup;
        for (int64_t l = 0; l < m; l += 2) f(vb->q[l], vb->q[l + 1], g0 + l);
    }
}

// The largest scale of value block vb over the tile's first n positions (8 at a time: they
// never straddle a group).
template <typename VG>
static inline float scale_max(const VG* vb, int64_t nb, int64_t n) {
    __m256 mv = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(value_scales(vb, nb, j)));
    float m = x86::hmax(mv);
    for (; j < n; ++j) m = std::fmax(m, *value_scales(vb, nb, j));
    return m;
}

// kLanes weights (floats in [0, kWeightOne]) rounded to the nearest int16, ties to even, at
// w (a NaN saturates); with kSum, their sum added to int32 lanes of sum (kNibbles).
#if QE_ATTENTION_LANES == 8
using WeightSums = __m128i;
template <bool kSum>
static inline void store_weights(int16_t* w, Vec t, WeightSums& sum) {
    const __m256i c = _mm256_cvtps_epi32(t);  // nearest, even
    const __m128i h = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(w), h);
    if constexpr (kSum) sum = _mm_add_epi32(sum, _mm_madd_epi16(h, _mm_set1_epi16(1)));
}
static inline int32_t lanes_sum(WeightSums v) {
    alignas(16) int32_t lane[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(lane), v);
    return lane[0] + lane[1] + lane[2] + lane[3];
}
#else
using WeightSums = __m256i;
template <bool kSum>
static inline void store_weights(int16_t* w, Vec t, WeightSums& sum) {
    const __m256i h = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(t));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w), h);
    if constexpr (kSum) sum = _mm256_add_epi32(sum, _mm256_madd_epi16(h, _mm256_set1_epi16(1)));
}
static inline int32_t lanes_sum(WeightSums v) {
    alignas(32) int32_t lane[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lane), v);
    int32_t s = 0;
    for (int i = 0; i < 8; ++i) s += lane[i];
    return s;
}
#endif

// A value row's codes as int8: 8 from column 8h (h < 4), 16 from column 16h (h < 2), all 32.
// The 4-bit rows' low nibbles are columns 0-15, their high ones 16-31 (formats.h).
static inline __m128i codes8(const int8_t* row, int h) {
    return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + 8 * h));
}
static inline __m128i codes16(const int8_t* row, int h) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * h));
}
// The 4-bit rows' nibbles u (unsigned: kNibbles).
static inline __m128i nibbles(__m128i b, int high) {
    return _mm_and_si128(_mm_srl_epi16(b, _mm_cvtsi32_si128(4 * high)), _mm_set1_epi8(15));
}
static inline __m128i codes8(const uint8_t* row, int h) {
    return nibbles(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + 8 * (h & 1))), h >> 1);
}
static inline __m128i codes16(const uint8_t* row, int h) {
    return nibbles(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row)), h);
}
#if QE_ATTENTION_LANES == 16
// The codes of value rows a and z (positions j, j + 1) interleaved per column and widened to
// int16, what dot_pairs takes: the int8 rows' columns 0-7 and 16-23 (an in-lane interleave's
// order) in c[0], 8-15 and 24-31 in c[1].
static inline void value_pairs(const int8_t* a, const int8_t* z, IVec* c) {
    const __m256i a32 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a));
    const __m256i z32 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(z));
    c[0] = _mm512_cvtepi8_epi16(_mm256_unpacklo_epi8(a32, z32));
    c[1] = _mm512_cvtepi8_epi16(_mm256_unpackhi_epi8(a32, z32));
}
// The 4-bit rows' nibbles u (unsigned: kNibbles) in column order: 0-15 in c[0], 16-31 in c[1].
// Their rows are adjacent 16 bytes (pairs never straddle a group), so one load holds both;
// each byte, widened to int16 and moved next to its partner, gives both columns' codes by
// a mask and a shift (12 instructions per pair as the int8 rows' lanes, 5 this way).
static inline void value_pairs(const uint8_t* a, const uint8_t*, IVec* c) {
    alignas(64) static constexpr uint16_t kInterleave[32] = {
        0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
        8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m256i az = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a));
    const IVec w =
        _mm512_permutexvar_epi16(_mm512_load_si512(kInterleave), _mm512_cvtepu8_epi16(az));
    c[0] = _mm512_and_si512(w, _mm512_set1_epi16(15));
    c[1] = _mm512_srli_epi16(w, 4);
}
#endif

// A row's weights are kLdw apart whatever the tile's length: a compile-time stride, so each
// row's pair is a fixed offset from one pointer (a run of 12 otherwise kept its rows' pointers
// on the stack and loaded one per row and pair).
constexpr int64_t kLdw = kAttentionTile;

// Value block vb's weights (vb: its block in the tile's first group): w[r * kLdw + j] for
// j < nt[r], zeros up to n_even (the tile's positions rounded up to even, so every pair is
// whole); unit[r] = W / kWeightOne; wsum[r] the weights' sum for 4-bit values (kNibbles),
// else 0. W is the bound p_max[r] * max_j dv_jb over the row's positions (kernels.h), so the
// max needs no pass over the products, and rows that see the same positions share the
// scales'. The scales of kLanes positions lie together in their group (rows of blocks had
// each call copy them out first: 8 % of an avx512 decode call at 16k). One block at a time,
// so the weights (6 KiB for runs of 12) stay in L1 for pair_sums: the whole tile's took 48
// KiB, more than Zen 4's L1.
template <int R, typename VG>
static inline void q8_weights(const float* p, int64_t ldp, const int64_t* nt, const float* p_max,
                              int64_t n_even, const VG* vb, int64_t nb, int16_t* w, float* unit,
                              int32_t* wsum) {
    float s_max = 0.0f;
    for (int r = 0; r < R; ++r) {
        const int64_t n = nt[r];
        if (r == 0 || n != nt[r - 1]) s_max = scale_max(vb, nb, n);
        const float* pr = p + r * ldp;
        int16_t* wr = w + r * kLdw;
        const float w_max = p_max[r] * s_max;
        const float inv = w_max > 0.0f ? float(kWeightOne) / w_max : 0.0f;
        unit[r] = w_max / float(kWeightOne);
        const Vec iv = QE_V(set1_ps)(inv);
        WeightSums sums{};  // zeros
        int64_t j = 0;
        for (; j + kLanes <= n; j += kLanes) {
            const Vec t =
                QE_V(mul_ps)(QE_V(loadu_ps)(pr + j), QE_V(loadu_ps)(value_scales(vb, nb, j)));
            store_weights<kNibbles<VG>>(wr + j, QE_V(mul_ps)(t, iv), sums);
        }
        int32_t sum = kNibbles<VG> ? lanes_sum(sums) : 0;
        for (; j < n; ++j) {
            // Clamped so a NaN cannot reach the conversion (the vectors' saturates).
            const float t = std::fmin(std::fmax(pr[j] * *value_scales(vb, nb, j) * inv, 0.0f),
                                      float(kWeightOne));
            wr[j] = int16_t(std::nearbyint(t));
            sum += wr[j];
        }
        for (; j < n_even; ++j) wr[j] = 0;
        wsum[r] = kNibbles<VG> ? sum : 0;
    }
}

#if QE_ATTENTION_LANES == 8
// Quarters of a value block (8 columns each) pair_sums takes at once for a run of R: all of a
// run's sums, a value vector per quarter and a broadcast in the 16 registers.
template <int R>
constexpr int kQuarters = R <= 4 ? 2 : 1;

// Value block vb's (its block in the tile's first group) int32 sums for R rows over the tile's
// nt_hi positions, a pair at a time (for_pairs), at columns 8h .. 8h + 8 kQuarters - 1 into
// sums[q * R + r]; fetching pf_step bytes from pf per pair. A function of its own, as
// avx512's.
template <int R, typename VG>
__attribute__((noinline)) static void pair_sums(const VG* vb, int64_t nb, int64_t nt_hi, int h,
                                                const int16_t* w, const char* pf,
                                                int64_t pf_step, IVec* sums) {
    constexpr int Q = kQuarters<R>;
    IVec acc[Q][R];
    for (int q = 0; q < Q; ++q)
        for (int r = 0; r < R; ++r) acc[q][r] = izero();
    for_pairs(vb, nb, nt_hi, [&](const auto* a, const auto* z, int64_t j) {
        for (int64_t b = 0; b < pf_step; b += 64)
            _mm_prefetch(pf + j / 2 * pf_step + b, _MM_HINT_T1);
        IVec c[Q];
        if constexpr (Q == 1) {
            c[0] = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(codes8(a, h), codes8(z, h)));
        } else {
            const __m128i a16 = codes16(a, h / 2), z16 = codes16(z, h / 2);
            c[0] = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(a16, z16));
            c[1] = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(a16, z16));
        }
        for (int r = 0; r < R; ++r) {
            int32_t pair;
            std::memcpy(&pair, w + r * kLdw + j, sizeof pair);
            for (int q = 0; q < Q; ++q) acc[q][r] = dot_pairs(acc[q][r], c[q], pair);
        }
    });
    for (int q = 0; q < Q; ++q)
        for (int r = 0; r < R; ++r) sums[q * R + r] = acc[q][r];
}
#else
// pair_sums for 16 lanes, the whole block at once: the columns of value_pairs' c[0] in
// sums[r], of c[1] in sums[R + r]. Its sums one [2][R] array:
// with the flush in the same body, or as two arrays, gcc 12 copies every sum twice per pair
// for runs of 4 or more (a 4k prefill chunk 185 -> 231 us per token).
template <int R, typename VG>
__attribute__((noinline)) static void pair_sums(const VG* vb, int64_t nb, int64_t nt_hi,
                                                const int16_t* w, const char* pf,
                                                int64_t pf_step, IVec* sums) {
    IVec acc[2][R];
    for (int h = 0; h < 2; ++h)
        for (int r = 0; r < R; ++r) acc[h][r] = izero();
    for_pairs(vb, nb, nt_hi, [&](const auto* ap, const auto* zp, int64_t j) {
        for (int64_t b = 0; b < pf_step; b += 64)
            _mm_prefetch(pf + j / 2 * pf_step + b, _MM_HINT_T1);
        IVec c[2];
        value_pairs(ap, zp, c);
        for (int r = 0; r < R; ++r) {
            int32_t pair;
            std::memcpy(&pair, w + r * kLdw + j, sizeof pair);
            for (int h = 0; h < 2; ++h) acc[h][r] = dot_pairs(acc[h][r], c[h], pair);
        }
    });
    for (int h = 0; h < 2; ++h)
        for (int r = 0; r < R; ++r) sums[h * R + r] = acc[h][r];
}
#endif

// out[e] (one row's, kLanes columns) = (first tile ? 0 : out * alpha) + unit * sums.
static inline void flush_sums(float* out, Vec sums, bool first, float alpha, float unit) {
    const Vec o =
        first ? QE_V(setzero_ps)() : QE_V(mul_ps)(QE_V(loadu_ps)(out), QE_V(set1_ps)(alpha));
    QE_V(storeu_ps)(out, QE_V(fmadd_ps)(sums, QE_V(set1_ps)(unit), o));
}

// The weighted sum of a tile on an integer cache (j0: its first row; nt [R], nt_hi as in
// attend_tile): out = (first tile ? 0 : out * alpha) + unit * sums, block by block, fetching
// pf_bytes from pf (the next tile's keys) along the way.
template <int R, typename VG>
static inline void weigh_q8(const Row* rows, const VG* v, int64_t j0, int64_t d,
                            const float* p, int64_t ldp, const int64_t* nt, int64_t nt_hi,
                            bool first, const float* alpha, const char* pf, int64_t pf_bytes) {
    const int64_t nb = d / kBlockK, n_even = (nt_hi + 1) & ~int64_t{1}, pairs = n_even / 2;
    Q8Scratch& x = q8_scratch(nb);
    const VG* vt = v + j0 / kKvGroup * nb;
    float p_max[R], unit[R];
    int32_t wsum[R] = {};  // 4-bit values: the weights' sums (kNibbles)
    for (int r = 0; r < R; ++r) p_max[r] = tile_max(p + r * ldp, nt[r]);
    const int64_t pf_step = pf ? (pf_bytes + nb * pairs * 64 - 1) / (nb * pairs * 64) * 64 : 0;
    for (int64_t b = 0; b < nb; ++b) {
        q8_weights<R>(p, ldp, nt, p_max, n_even, vt + b, nb, x.w.data(), unit, wsum);
        const char* pfb = pf + b * pairs * pf_step;
#if QE_ATTENTION_LANES == 8
        constexpr int Q = kQuarters<R>;
        for (int h = 0; h < 4; h += Q) {
            IVec sums[Q * R];
            // The block's fetches ride on its first quarters.
            pair_sums<R>(vt + b, nb, nt_hi, h, x.w.data(), pfb, h == 0 ? pf_step : 0, sums);
            for (int q = 0; q < Q; ++q) {
                for (int r = 0; r < R; ++r) {
                    IVec sr = sums[q * R + r];
                    if constexpr (kNibbles<VG>)
                        sr = _mm256_sub_epi32(sr, _mm256_set1_epi32(8 * wsum[r]));
                    flush_sums(rows[r].out + b * kBlockK + 8 * (h + q), _mm256_cvtepi32_ps(sr),
                               first, alpha[r], unit[r]);
                }
            }
        }
#else
        IVec sums[2 * R];
        pair_sums<R>(vt + b, nb, nt_hi, x.w.data(), pfb, pf_step, sums);
        for (int r = 0; r < R; ++r) {
            IVec s0 = sums[r], s1 = sums[R + r];
            if constexpr (kNibbles<VG>) {
                const IVec offset = _mm512_set1_epi32(8 * wsum[r]);
                s0 = _mm512_sub_epi32(s0, offset);
                s1 = _mm512_sub_epi32(s1, offset);
            }
            const __m512 f0 = _mm512_cvtepi32_ps(s0), f1 = _mm512_cvtepi32_ps(s1);
            float* out = rows[r].out + b * kBlockK;
            if constexpr (kNibbles<VG>) {  // value_pairs' column order
                flush_sums(out, f0, first, alpha[r], unit[r]);
                flush_sums(out + 16, f1, first, alpha[r], unit[r]);
            } else {
                flush_sums(out, _mm512_shuffle_f32x4(f0, f1, _MM_SHUFFLE(1, 0, 1, 0)), first,
                           alpha[r], unit[r]);
                flush_sums(out + 16, _mm512_shuffle_f32x4(f0, f1, _MM_SHUFFLE(3, 2, 3, 2)), first,
                           alpha[r], unit[r]);
            }
        }
#endif
    }
}

// Tile j0 of a run of R rows with the same number of tiles, sorted by n (rows[0] sees the
// fewest positions); p [R, ldp] the tile's scores; m, l [R] the rows' running max and sum,
// carried from tile to tile by the caller (-inf and 0 before the first).
template <int R, typename K, typename V>
static void attend_tile(const Row* rows, const K* k, const V* v, int64_t d, float scale,
                        float* p, int64_t ldp, int64_t j0, float* m, float* l, bool fetch_next) {
    // Column vectors per weighted-sum pass: >= 8 chains where the accumulators, a value and
    // a broadcast fit in the registers.
    constexpr int kCols = 4 * (R + 1) + 2 <= kRegs ? 4 : 2 * (R + 1) + 2 <= kRegs ? 2 : 1;
    const int64_t dv = d & ~int64_t{kLanes - 1};
    const int64_t n_lo = rows[0].n;
    float alpha[R];
    // Positions [j0, j0 + nt_lo) are every row's; row r's stop at nt[r] (only in the last
    // tile do they differ).
    const int64_t nt_lo = n_lo - j0 < kAttentionTile ? n_lo - j0 : kAttentionTile;
    int64_t nt[R];
    for (int r = 0; r < R; ++r)
        nt[r] = rows[r].n - j0 < kAttentionTile ? rows[r].n - j0 : kAttentionTile;
    score_tile<R>(rows, k, v, j0, nt_lo, nt, d, scale, p, ldp);
    for (int r = 0; r < R; ++r) {
        const float mn = std::fmax(m[r], tile_max(p + r * ldp, nt[r]));
        alpha[r] = j0 == 0 ? 0.0f : std::exp(m[r] - mn);
        m[r] = mn;
        l[r] = l[r] * alpha[r] + exp_sum(p + r * ldp, nt[r], mn);
    }

    // out = (first tile ? 0 : out * alpha) + sum_j p_j v_j, kLanes columns at a time; row
    // r's sum runs over its own nt[r] positions in order.
    const bool first = j0 == 0;
    const int64_t v0j = j0 * d;
    // The weighted sum reads only cache, so memory would idle: fetch the next tile's keys
    // meanwhile, pf_step bytes per position and pass.
    const char* pf = nullptr;
    int64_t pf_bytes = 0, pf_step = 0;
    const int64_t next = j0 + kAttentionTile;
    if (fetch_next && next < rows[R - 1].n && nt_lo > 0) {
        const int64_t rows_next = std::min(kAttentionTile, rows[R - 1].n - next);
        pf = row_at(k, next, d);
        pf_bytes = row_at(k, next + rows_next, d) - pf;
        const int64_t passes = dv / (kCols * kLanes) > 0 ? dv / (kCols * kLanes) : 1;
        pf_step = (pf_bytes + passes * nt_lo * 64 - 1) / (passes * nt_lo * 64) * 64;
    }
    if constexpr (kValueGroups<V>) {
        weigh_q8<R>(rows, v, j0, d, p, ldp, nt, nt[R - 1], first, alpha, pf, pf_bytes);
    } else {
        int64_t pass = 0;
        int64_t e0 = 0;
        for (; e0 + kCols * kLanes <= dv; e0 += kCols * kLanes, ++pass)
            weigh_pass<R, kCols>(rows, v, v0j, d, e0, p, ldp, nt_lo, nt, first, alpha,
                                 pf + pass * nt_lo * pf_step, pf_step);
        for (; e0 < dv; e0 += kLanes)
            weigh_pass<R, 1>(rows, v, v0j, d, e0, p, ldp, nt_lo, nt, first, alpha, nullptr, 0);
        for (; e0 < d; ++e0) {
            for (int r = 0; r < R; ++r) {
                float acc = first ? 0.0f : rows[r].out[e0] * alpha[r];
                for (int64_t j = 0; j < nt[r]; ++j)
                    acc += p[r * ldp + j] * load1(v, v0j + j * d + e0);
                rows[r].out[e0] = acc;
            }
        }
    }
}

// Runs of at most 12 rows share each K/V tile read; a block of up to kBlock rows (in runs,
// each run's rows with the same number of tiles) walks the tiles once and hands each tile to
// every run still under way, so at depth a tile comes from memory once per block instead of
// once per run (the cache, not the FMAs, bounds a prefill chunk at 64k). Each row still does
// the same operations in the same order, tile by tile, whatever block or run it is in.
constexpr int kBlock = 4 * kRun;

struct Block {
    Row rows[kBlock];
    int run_end[kBlock];  // runs: rows [run_end[i - 1], run_end[i]), run_end[-1] = 0
    int count = 0, runs = 0;
};

template <typename K, typename V>
static void attend_block(const Block& b, const K* k, const V* v, int64_t d, float scale, float* p,
                         int64_t ldp) {
    static_assert(kRun == 12, "attend_block instantiates runs of at most 12 rows");
    float m[kBlock], l[kBlock];
    for (int i = 0; i < b.count; ++i) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
    }
    for (int64_t j0 = 0; j0 < b.rows[b.count - 1].n; j0 += kAttentionTile) {
        for (int run = 0, first = 0; run < b.runs; first = b.run_end[run++]) {
            if (b.rows[b.run_end[run] - 1].n <= j0) continue;  // its tiles are done
            // The run as instantiated sizes (12, 8, 4, 3, 2, 1), largest first.
            for (int i = first; i < b.run_end[run];) {
                const int left = b.run_end[run] - i;
                const int r = left >= 12 ? 12 : left >= 8 ? 8 : left >= 4 ? 4 : left;
                const Row* rows = b.rows + i;
                // The block's last rows see the most positions: they alone fetch ahead.
                const bool last = i + r == b.count;
                float* pi = p + i * ldp;
                switch (r) {
                    case 12:
                        attend_tile<12>(rows, k, v, d, scale, pi, ldp, j0, m + i, l + i, last);
                        break;
                    case 8:
                        attend_tile<8>(rows, k, v, d, scale, pi, ldp, j0, m + i, l + i, last);
                        break;
                    case 4:
                        attend_tile<4>(rows, k, v, d, scale, pi, ldp, j0, m + i, l + i, last);
                        break;
                    case 3:
                        attend_tile<3>(rows, k, v, d, scale, pi, ldp, j0, m + i, l + i, last);
                        break;
                    case 2:
                        attend_tile<2>(rows, k, v, d, scale, pi, ldp, j0, m + i, l + i, last);
                        break;
                    default:
                        attend_tile<1>(rows, k, v, d, scale, pi, ldp, j0, m + i, l + i, last);
                        break;
                }
                i += r;
            }
        }
    }
    for (int i = 0; i < b.count; ++i) {
        const float inv = 1.0f / l[i];
        for (int64_t e = 0; e < d; ++e) b.rows[i].out[e] *= inv;
    }
}

// Rows token by token (n ascending), cut into runs of at most kRun rows whose last positions
// fall in the same tile, and the runs into blocks of at most kBlock rows. Row i of a block
// keeps its tile's scores in scratch row i (the scratch has a row per query of the call).
template <typename K, typename V>
static void attention(const float* q, int64_t ldq, int64_t ldqt, int64_t n_q, int64_t n_t,
                      const K* k, const V* v, int64_t n, int64_t d, float scale, float* scratch,
                      float* out, int64_t ldo, int64_t ldot) {
    const int64_t ldp = n < kAttentionTile ? n : kAttentionTile;
    Block b;
    // The integer caches' quantized queries, a slot per row of a block (24 KiB at d = 256).
    thread_local QueryCodes<K> codes;
    if constexpr (kKeyGroups<K>) {
        codes.reserve(kBlock, d);
        Q8Scratch& x = q8_scratch(d / kBlockK);
        x.widened_base = nullptr;  // the cache may have changed since
    }
    for (int64_t r = 0; r < n_t; ++r) {
        const int64_t n_r = n - (n_t - 1 - r);
        for (int64_t i = 0; i < n_q; ++i) {
            if (b.count == kBlock) {
                attend_block(b, k, v, d, scale, scratch, ldp);
                b.count = b.runs = 0;
            }
            // The open run is the last one: rows [run_first, b.count).
            const int run_first = b.runs < 2 ? 0 : b.run_end[b.runs - 2];
            const bool same_run = b.runs > 0 && b.count - run_first < kRun &&
                                  (b.rows[run_first].n - 1) / kAttentionTile ==
                                      (n_r - 1) / kAttentionTile;
            if (same_run) {
                ++b.run_end[b.runs - 1];
            } else {
                b.run_end[b.runs++] = b.count + 1;
            }
            Row row{q + r * ldqt + i * ldq, out + r * ldot + i * ldo, n_r};
            if constexpr (kKeyGroups<K>) codes.quantize(row, b.count, d);
            b.rows[b.count++] = row;
        }
    }
    if (b.count > 0) attend_block(b, k, v, d, scale, scratch, ldp);
}

#include "kernels/attention_entries_inl.h"

#undef QE_V
#undef QE_ATTENTION_LANES
#undef QE_ATTENTION_AVX_VNNI
