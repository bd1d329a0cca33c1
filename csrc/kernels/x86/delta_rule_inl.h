// SPDX-License-Identifier: Apache-2.0
// The gated delta rule on float vectors, shared by the avx2 (8 lanes) and avx512_vnni
// (16 lanes) tables. Included INSIDE the ISA namespace of a translation unit compiled with that
// ISA's flags (after <immintrin.h> and <cstring>), with QE_DELTA_LANES defined as 8 or 16,
// which it undefines; so each ISA keeps its own copy (STYLE.md §5).
//
// Layout of the work: the state S [dk, dv] is cut into column tiles of kTileVecs vectors, and
// a tile runs through all t tokens before the next one (the columns of S are independent).
// The tile is copied to a dense local buffer first, because S's rows are dv * 4 bytes apart
// (512 for dv = 128): every 8th row then shares its address bits 0-11 with the row stored
// just before, and x86 cores hold such loads behind the store ("4K aliasing"). On the 0.8B
// shape (dk = dv = 128) working in place took 4.3-4.5 us per head and token on avx512_vnni and
// 5.1-6.2 us on avx2, the dense tile 1.4-1.9 and 2.4-3.5 us (`qe_bench --delta ISA 20`, old and
// new alternating three times on the development VM).
// The tile is dk * kTileVecs * kLanes * 4 bytes (32 KiB / 16 KiB for dk = 128), so it stays in
// L1 across the tokens.
//
// Per token, pass 1 decays the tile and reads e = S^T k, pass 2 adds k delta^T and reads
// o = S^T q. Each column's sum over dk runs as kPartials = 4 interleaved fused multiply-add
// chains (row i into chain i % 4, added pairwise at the end), which hides the FMA latency. The
// order depends on dk alone, so results do not depend on t (how a prompt is split).

#if QE_DELTA_LANES == 8
using Vec = __m256;
#define QE_V(op) _mm256_##op
#elif QE_DELTA_LANES == 16
using Vec = __m512;
#define QE_V(op) _mm512_##op
#else
#error "delta_rule_inl.h: define QE_DELTA_LANES as 8 or 16 before including it"
#endif

// kTileVecs: vectors per column tile; kPartials: chains per column sum.
constexpr int kLanes = QE_DELTA_LANES, kTileVecs = 4, kPartials = 4;

static inline Vec vload(const float* p) {
    return QE_V(loadu_ps)(p);
}
static inline void vstore(float* p, Vec v) {
    QE_V(storeu_ps)(p, v);
}
static inline Vec vset1(float x) {
    return QE_V(set1_ps)(x);
}
static inline Vec vzero() {
    return QE_V(setzero_ps)();
}
static inline Vec vadd(Vec a, Vec b) {
    return QE_V(add_ps)(a, b);
}
static inline Vec vsub(Vec a, Vec b) {
    return QE_V(sub_ps)(a, b);
}
static inline Vec vmul(Vec a, Vec b) {
    return QE_V(mul_ps)(a, b);
}
// a * b + c, fused.
static inline Vec vfmadd(Vec a, Vec b, Vec c) {
    return QE_V(fmadd_ps)(a, b, c);
}

#undef QE_V
#undef QE_DELTA_LANES

// Largest dk that takes the tile copy (the buffer is on the stack); larger runs in place.
constexpr int64_t kMaxTiledDk = 128;

static_assert(kPartials == 4, "sum_partials adds four chains");

// Sum of the four chains, pairwise: (c0 + c1) + (c2 + c3).
static inline Vec sum_partials(const Vec* c) {
    return vadd(vadd(c[0], c[1]), vadd(c[2], c[3]));
}

// One token on a column tile: row i of the tile at s + i * ld; v, o: the tile's columns.
static inline void delta_step(float* s, int64_t ld, const float* q, const float* k, const float* v,
                              float a, float b, float* o, int64_t dk) {
    constexpr int J = kTileVecs, P = kPartials;
    const Vec va = vset1(a);
    Vec e[J][P];
    for (int jj = 0; jj < J; ++jj) {
        for (int p = 0; p < P; ++p) e[jj][p] = vzero();
    }
    // Row i of the tile: decay it and feed chain p of e.
    auto decay_row = [&](int64_t i, int p) {
        float* row = s + i * ld;
        const Vec ki = vset1(k[i]);
        for (int jj = 0; jj < J; ++jj) {
            const Vec sv = vmul(vload(row + kLanes * jj), va);
            vstore(row + kLanes * jj, sv);
            e[jj][p] = vfmadd(sv, ki, e[jj][p]);
        }
    };
    int64_t i = 0;
    for (; i + P <= dk; i += P) {
        for (int p = 0; p < P; ++p) decay_row(i + p, p);
    }
    for (; i < dk; ++i) decay_row(i, 0);

    Vec delta[J], out[J][P];
    const Vec vb = vset1(b);
    for (int jj = 0; jj < J; ++jj) {
        delta[jj] = vmul(vb, vsub(vload(v + kLanes * jj), sum_partials(e[jj])));
        for (int p = 0; p < P; ++p) out[jj][p] = vzero();
    }
    // Row i: add k[i] delta and feed chain p of o.
    auto update_row = [&](int64_t row_i, int p) {
        float* row = s + row_i * ld;
        const Vec ki = vset1(k[row_i]), qi = vset1(q[row_i]);
        for (int jj = 0; jj < J; ++jj) {
            const Vec sv = vfmadd(ki, delta[jj], vload(row + kLanes * jj));
            vstore(row + kLanes * jj, sv);
            out[jj][p] = vfmadd(sv, qi, out[jj][p]);
        }
    };
    for (i = 0; i + P <= dk; i += P) {
        for (int p = 0; p < P; ++p) update_row(i + p, p);
    }
    for (; i < dk; ++i) update_row(i, 0);
    for (int jj = 0; jj < J; ++jj) vstore(o + kLanes * jj, sum_partials(out[jj]));
}

// One column j of S over all tokens, as ref (the columns a whole tile does not cover).
static inline void delta_column(float* s, const float* q, const float* k, const float* v,
                                int64_t ldu, const float* decay, const float* beta, int64_t ldg,
                                float* o, int64_t ldo, int64_t t, int64_t dk, int64_t dv,
                                int64_t j) {
    for (int64_t tok = 0; tok < t; ++tok) {
        const float* kt = k + tok * ldu;
        const float* qt = q + tok * ldu;
        const float a = decay[tok * ldg];
        float e = 0.0f;
        for (int64_t i = 0; i < dk; ++i) {
            s[i * dv + j] *= a;
            e += s[i * dv + j] * kt[i];
        }
        const float delta = beta[tok * ldg] * (v[tok * ldu + j] - e);
        float acc = 0.0f;
        for (int64_t i = 0; i < dk; ++i) {
            s[i * dv + j] += kt[i] * delta;
            acc += s[i * dv + j] * qt[i];
        }
        o[tok * ldo + j] = acc;
    }
}

void delta_rule(float* s, const float* q, const float* k, const float* v, int64_t ldu,
                const float* decay, const float* beta, int64_t ldg, float* o, int64_t ldo,
                int64_t t, int64_t dk, int64_t dv) {
    constexpr int64_t kTile = int64_t(kTileVecs) * kLanes;
    constexpr size_t kRowBytes = kTile * sizeof(float);
    alignas(64) float buffer[kMaxTiledDk * kTile];
    const bool copy = dk <= kMaxTiledDk;
    int64_t j0 = 0;
    for (; j0 + kTile <= dv; j0 += kTile) {
        float* tile = copy ? buffer : s + j0;
        const int64_t ld = copy ? kTile : dv;
        if (copy) {
            for (int64_t i = 0; i < dk; ++i) std::memcpy(tile + i * ld, s + i * dv + j0, kRowBytes);
        }
        for (int64_t tok = 0; tok < t; ++tok) {
            delta_step(tile, ld, q + tok * ldu, k + tok * ldu, v + tok * ldu + j0, decay[tok * ldg],
                       beta[tok * ldg], o + tok * ldo + j0, dk);
        }
        if (copy) {
            for (int64_t i = 0; i < dk; ++i) std::memcpy(s + i * dv + j0, tile + i * ld, kRowBytes);
        }
    }
    for (; j0 < dv; ++j0) delta_column(s, q, k, v, ldu, decay, beta, ldg, o, ldo, t, dk, dv, j0);
}
