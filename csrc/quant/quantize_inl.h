// SPDX-License-Identifier: Apache-2.0
// The export quantizers (quantize.h), as code compiled into the file that includes it, inside
// that file's namespace and with internal linkage (the *_inl.h convention of kernels/kernels.h):
// quant/quantize.cc includes it for the build's baseline ISA.
//
// Each function is the C++ transcription of the Python reference, expression for expression:
//   symmetric_scales / affine_scales   formats/_quant_numba.py sym_all / aff_all (float64, the
//                                      block index innermost, sums over a block's 32 columns in
//                                      column order, each term weighted as (w l) x with the
//                                      column's importance w, 1 without)
//   quantize_row_*                     formats/quant.py quantize_<format> (float32 divisions and
//                                      products, rint ties to even, f16 rounding to nearest even)
// so the bytes are equal, not merely close. Two rewrites keep them equal while letting the
// compiler vectorise without SSE4.1/NEON rounding instructions: floor is taken after the clamp
// (same result: floor is monotone and the bounds are integers) by truncation, and rint by the
// 1.5 * 2^23 addition (exact ties-to-even for |v| < 2^22, true after the clamp). The build uses
// -ffp-contract=off, so no product is fused into an addition behind our back.
//
// Requires: <algorithm>, <cmath>, <cstring>, <vector>, quant/formats.h, quant/quantize.h.

static constexpr int kSymSteps = 19;  // _quant_search.SYM_STEPS = -9..9
static constexpr int kAffSteps = 21;  // _quant_search.AFF_STEPS = 0..20
static constexpr int kRefine = 3;     // _quant_search.REFINE
static constexpr int kRefineQ8 = 3;   // quant.REFINE_Q8
static constexpr float kF16Max = 65504.0f;

// min(max(floor(t), lo), hi) for integer bounds lo <= hi, |lo|, |hi| < 2^31.
static inline double floor_clamped(double t, double lo, double hi) {
    const double c = t < lo ? lo : (t > hi ? hi : t);
    const double i = double(int32_t(c));  // truncation (the clamped value fits int32)
    return c < i ? i - 1.0 : i;
}

// np.clip(np.rint(v), lo, hi) in float32 for integer bounds with |lo|, |hi| < 2^22.
static inline float rint_clamped(float v, float lo, float hi) {
    const float c = v < lo ? lo : (v > hi ? hi : v);
    constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: the sum's ulp is 1
    return (c + kMagic) - kMagic;
}

// _rtn_codes: round(x / d) clipped, 0 where d == 0.
static inline float rtn(float x, float d, float lo, float hi) {
    return d != 0.0f ? rint_clamped(x / d, lo, hi) : 0.0f;
}

// quant._f16: clip to the half range, then round to half.
static inline uint16_t f16_clipped(float v) {
    return f32_to_f16(v < -kF16Max ? -kF16Max : (v > kF16Max ? kF16Max : v));
}

// QE_QUANT_LANES blocks at a time (the includer defines it: 2 for 16-byte vectors, 4 for
// 32-byte ones) in GCC/Clang vector types: lane-wise IEEE operations, so each lane is exactly
// the scalar code above, and the clamps become selects instead of branches.
#if !defined(QE_QUANT_LANES) || (QE_QUANT_LANES != 2 && QE_QUANT_LANES != 4)
#error "quantize_inl.h: define QE_QUANT_LANES as 2 or 4 before including it"
#endif
constexpr int kLanes = QE_QUANT_LANES;
typedef double VD __attribute__((vector_size(8 * QE_QUANT_LANES)));
typedef int32_t VI __attribute__((vector_size(4 * QE_QUANT_LANES)));

static inline VD splat(double v) {
    VD r;
    for (int i = 0; i < kLanes; ++i) r[i] = v;
    return r;
}
static inline VD loadv(const double* p) {
    VD v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
static inline void storev(double* p, VD v) { std::memcpy(p, &v, sizeof v); }

// floor_clamped on every lane.
static inline VD floor_clampedv(VD t, VD lo, VD hi) {
    VD c = t < lo ? lo : t;
    c = c > hi ? hi : c;
    const VD i = __builtin_convertvector(__builtin_convertvector(c, VI), VD);
    return c < i ? i - 1.0 : i;
}

// One pass of the symmetric search: the sums of l x and l l for the codes
// l = clamp(floor(iscale x + 0.5)), each block's sum over its 32 columns in column order.
static void sym_pass(const double* QE_RESTRICT xt, const double* QE_RESTRICT wt, int64_t nb,
                     const double* QE_RESTRICT iscale, double nmax, double* QE_RESTRICT sumlx,
                     double* QE_RESTRICT suml2) {
    int64_t b = 0;
    const VD lov = splat(-nmax), hiv = splat(nmax - 1.0), halfv = splat(0.5);
    for (; b + kLanes <= nb; b += kLanes) {
        VD s1 = splat(0.0), s2 = splat(0.0);
        const VD is = loadv(iscale + b);
        for (int j = 0; j < kBlockK; ++j) {
            const VD xv = loadv(xt + j * nb + b);
            const VD lv = floor_clampedv(is * xv + halfv, lov, hiv);
            const VD wl = loadv(wt + j * nb + b) * lv;
            s1 += wl * xv;
            s2 += wl * lv;
        }
        storev(sumlx + b, s1);
        storev(suml2 + b, s2);
    }
    for (; b < nb; ++b) {
        double s1 = 0.0, s2 = 0.0;
        for (int j = 0; j < kBlockK; ++j) {
            const double xv = xt[j * nb + b];
            const double lv = floor_clamped(iscale[b] * xv + 0.5, -nmax, nmax - 1.0);
            const double wl = wt[j * nb + b] * lv;
            s1 += wl * xv;
            s2 += wl * lv;
        }
        sumlx[b] = s1;
        suml2[b] = s2;
    }
}

// One pass of the affine search: sums of l, l l and x l for l = clamp(floor(iscale (x - base)
// + 0.5)).
static void aff_pass(const double* QE_RESTRICT xt, const double* QE_RESTRICT wt, int64_t nb,
                     const double* QE_RESTRICT iscale,
                     const double* QE_RESTRICT base, double nmax, double* QE_RESTRICT sl,
                     double* QE_RESTRICT sl2, double* QE_RESTRICT sxl) {
    int64_t b = 0;
    const VD lov = splat(0.0), hiv = splat(nmax), halfv = splat(0.5);
    for (; b + kLanes <= nb; b += kLanes) {
        VD s0 = splat(0.0), s1 = splat(0.0), s2 = splat(0.0);
        const VD is = loadv(iscale + b), bs = loadv(base + b);
        for (int j = 0; j < kBlockK; ++j) {
            const VD xv = loadv(xt + j * nb + b);
            const VD lv = floor_clampedv(is * (xv - bs) + halfv, lov, hiv);
            const VD wv = loadv(wt + j * nb + b);
            const VD wl = wv * lv;
            s0 += wl;
            s1 += wl * lv;
            s2 += wv * xv * lv;
        }
        storev(sl + b, s0);
        storev(sl2 + b, s1);
        storev(sxl + b, s2);
    }
    for (; b < nb; ++b) {
        double s0 = 0.0, s1 = 0.0, s2 = 0.0;
        for (int j = 0; j < kBlockK; ++j) {
            const double xv = xt[j * nb + b];
            const double lv = floor_clamped(iscale[b] * (xv - base[b]) + 0.5, 0.0, nmax);
            const double wv = wt[j * nb + b];
            const double wl = wv * lv;
            s0 += wl;
            s1 += wl * lv;
            s2 += wv * xv * lv;
        }
        sl[b] = s0;
        sl2[b] = s1;
        sxl[b] = s2;
    }
}

// Per-row scratch, sized for one row of nb blocks.
struct RowScratch {
    int64_t nb = 0;
    std::vector<double> xt;  // [32][nb]: the row's blocks by column
    std::vector<double> wt;  // [32][nb]: the column weights (importance; 1 without), like xt
    std::vector<double> fw;  // [nb]: each block's weight sum
    std::vector<double> v[8];
    std::vector<double> extra;  // [6][nb]
    RowScratch(int64_t blocks, const float* importance)
        : nb(blocks), xt(size_t(32 * blocks)), wt(size_t(32 * blocks), 1.0), fw(size_t(blocks)),
          extra(size_t(6 * blocks)) {
        for (auto& a : v) a.assign(size_t(blocks), 0.0);
        if (importance)
            for (int64_t b = 0; b < nb; ++b)
                for (int j = 0; j < kBlockK; ++j)
                    wt[size_t(j * nb + b)] = double(importance[b * kBlockK + j]);
        for (int64_t b = 0; b < nb; ++b) {
            double sw = 0.0;  // in column order, as _quant_search._colsum
            for (int j = 0; j < kBlockK; ++j) sw += wt[size_t(j * nb + b)];
            fw[size_t(b)] = sw;
        }
    }
    void load(const float* x) {
        for (int64_t b = 0; b < nb; ++b)
            for (int j = 0; j < kBlockK; ++j) xt[size_t(j * nb + b)] = double(x[b * kBlockK + j]);
    }
};

// sym_all for one row (loaded into s.xt): scale[b] with x ~ scale * l, l in [-nmax, nmax - 1].
static void symmetric_scales(RowScratch& s, double nmax, float* out) {
    const int64_t nb = s.nb;
    const double* xt = s.xt.data();
    double *vmax = s.v[0].data(), *amax = s.v[1].data(), *best = s.v[2].data();
    double *best_scale = s.v[3].data(), *iscale = s.v[4].data(), *sumlx = s.v[5].data();
    double* suml2 = s.v[6].data();
    for (int64_t b = 0; b < nb; ++b) {
        vmax[b] = 0.0;
        amax[b] = -1.0;
        best[b] = -1.0;
        best_scale[b] = 0.0;
    }
    for (int j = 0; j < kBlockK; ++j) {
        for (int64_t b = 0; b < nb; ++b) {
            const double a = std::fabs(xt[j * nb + b]);
            if (a > amax[b]) {
                amax[b] = a;
                vmax[b] = xt[j * nb + b];
            }
        }
    }
    for (int t = 0; t < kSymSteps + kRefine; ++t) {
        for (int64_t b = 0; b < nb; ++b) {
            if (t < kSymSteps) {
                const double step = double(t - 9);
                iscale[b] = vmax[b] != 0.0 ? -(nmax + 0.1 * step) / vmax[b] : 0.0;
            } else {
                iscale[b] = best_scale[b] != 0.0 ? 1.0 / best_scale[b] : 0.0;
            }
            sumlx[b] = 0.0;
            suml2[b] = 0.0;
        }
        sym_pass(xt, s.wt.data(), nb, iscale, nmax, sumlx, suml2);
        for (int64_t b = 0; b < nb; ++b) {
            if (suml2[b] > 0) {
                const double score = sumlx[b] * sumlx[b] / suml2[b];
                if (score > best[b]) {
                    best[b] = score;
                    best_scale[b] = sumlx[b] / suml2[b];
                }
            }
        }
    }
    for (int64_t b = 0; b < nb; ++b) out[b] = vmax[b] != 0.0 ? float(best_scale[b]) : 0.0f;
}

// aff_all for one row: x ~ s * l - neg_min, l in [0, nmax]; s_out[b], m_out[b] (= neg_min).
static void affine_scales(RowScratch& s, double nmax, float* s_out, float* m_out) {
    const int64_t nb = s.nb;
    const double* xt = s.xt.data();
    const double *wt = s.wt.data(), *fw = s.fw.data();
    double *lo = s.v[0].data(), *hi = s.v[1].data(), *sx = s.v[2].data(), *sx2 = s.v[3].data();
    double *rng = s.v[4].data(), *best_s = s.v[5].data(), *best_m = s.v[6].data();
    double* best_err = s.v[7].data();
    double *iscale = s.extra.data(), *base = iscale + nb, *sl = base + nb, *sl2 = sl + nb;
    double* sxl = sl2 + nb;
    for (int64_t b = 0; b < nb; ++b) {
        lo[b] = 0.0;
        hi[b] = -INFINITY;
        sx[b] = 0.0;
        sx2[b] = 0.0;
    }
    for (int j = 0; j < kBlockK; ++j) {
        for (int64_t b = 0; b < nb; ++b) {
            const double xv = xt[j * nb + b];
            lo[b] = std::min(lo[b], xv);
            hi[b] = std::max(hi[b], xv);
            const double wx = wt[j * nb + b] * xv;
            sx[b] += wx;
            sx2[b] += wx * xv;
        }
    }
    for (int64_t b = 0; b < nb; ++b) {
        rng[b] = hi[b] > lo[b] ? hi[b] - lo[b] : 1.0;
        best_s[b] = 0.0;
        best_m[b] = lo[b];
        best_err[b] = INFINITY;
    }
    for (int t = 0; t < 1 + kAffSteps + kRefine; ++t) {
        for (int64_t b = 0; b < nb; ++b) {
            if (t == 0) {
                iscale[b] = nmax / rng[b];
                base[b] = lo[b];
            } else if (t <= kAffSteps) {
                iscale[b] = (-1.0 + 0.1 * double(t - 1) + nmax) / rng[b];
                base[b] = lo[b];
            } else {
                iscale[b] = best_s[b] > 0 ? 1.0 / best_s[b] : 0.0;
                base[b] = best_m[b];
            }
            sl[b] = 0.0;
            sl2[b] = 0.0;
            sxl[b] = 0.0;
        }
        aff_pass(xt, wt, nb, iscale, base, nmax, sl, sl2, sxl);
        for (int64_t b = 0; b < nb; ++b) {
            double sv = 0.0, mn = 0.0;
            bool ok = true;
            if (t == 0) {
                sv = 1.0 / iscale[b];
                mn = lo[b];
            } else {
                const double det = fw[b] * sl2[b] - sl[b] * sl[b];
                ok = det > 0;
                if (ok) {
                    sv = (fw[b] * sxl[b] - sx[b] * sl[b]) / det;
                    mn = (sl2[b] * sx[b] - sl[b] * sxl[b]) / det;
                    if (mn > 0) {
                        sv = sl2[b] > 0 ? sxl[b] / sl2[b] : 0.0;
                        mn = 0.0;
                    }
                }
            }
            if (ok) {
                const double err = sv * sv * sl2[b] + 2.0 * sv * mn * sl[b] + fw[b] * mn * mn -
                                   2.0 * sv * sxl[b] - 2.0 * mn * sx[b] + sx2[b];
                if (err < best_err[b]) {
                    best_err[b] = err;
                    best_s[b] = sv;
                    best_m[b] = mn;
                }
            }
        }
    }
    for (int64_t b = 0; b < nb; ++b) {
        const bool flat = !(hi[b] > lo[b]);
        s_out[b] = flat ? 0.0f : float(best_s[b]);
        // + 0.0f: quant.py's canonical zero (a -0.0 minimum stored as +0.0)
        m_out[b] = float(-(flat ? lo[b] : best_m[b])) + 0.0f;
    }
}

// One row group's quantized rows before interleaving (quant.Quantized for 8 rows).
struct GroupData {
    int64_t k = 0, nb = 0;
    std::vector<uint8_t> codes;  // [8][k], padding rows 0
    std::vector<uint16_t> p0;    // [8][nb]: f16 d (q8g32, q4g32, q4ag32), u8 sc (q4k), i8 sc (q6k)
    std::vector<uint16_t> p1;    // [8][nb]: f16 m (q4ag32), u8 mn (q4k)
    float row_d[kRowPack] = {}, row_m[kRowPack] = {};
    std::vector<float> fa, fb;  // [nb] per-row float scratch
    GroupData(int64_t k_, int64_t nb_)
        : k(k_), nb(nb_), codes(size_t(kRowPack * k_)), p0(size_t(kRowPack * nb_)),
          p1(size_t(kRowPack * nb_)), fa(size_t(nb_)), fb(size_t(nb_)) {}
    void clear() {
        std::fill(codes.begin(), codes.end(), uint8_t{0});
        std::fill(p0.begin(), p0.end(), uint16_t{0});
        std::fill(p1.begin(), p1.end(), uint16_t{0});
        for (int i = 0; i < kRowPack; ++i) row_d[i] = row_m[i] = 0.0f;
    }
};

// quantize_q8g32: absmax scale, then up to kRefineQ8 least-squares refits, the best f16 scale
// (lowest float64 squared error) kept per block.
static void quantize_row_q8g32(const float* x, GroupData& g, int ri) {
    uint8_t* codes = g.codes.data() + ri * g.k;
    uint16_t* dout = g.p0.data() + ri * g.nb;
    float q[kBlockK], qn[kBlockK];
    for (int64_t b = 0; b < g.nb; ++b) {
        const float* xb = x + b * kBlockK;
        float amax = 0.0f;
        for (int j = 0; j < kBlockK; ++j) amax = std::max(amax, std::fabs(xb[j]));
        auto sse = [&](float d, const float* qq) {
            double acc = 0.0;
            for (int j = 0; j < kBlockK; ++j) {
                const float diff = d * qq[j] - xb[j];
                acc += double(diff) * double(diff);
            }
            return acc;
        };
        uint16_t d16 = f16_clipped(amax / 127.0f);
        float d = f16_to_f32(d16);
        for (int j = 0; j < kBlockK; ++j) q[j] = rtn(xb[j], d, -127.0f, 127.0f);
        double err = sse(d, q);
        uint16_t cand16 = d16;
        for (int it = 0; it < kRefineQ8; ++it) {
            const float cand = f16_to_f32(cand16);
            double num = 0.0, den = 0.0;
            for (int j = 0; j < kBlockK; ++j) {
                const double qc = double(rtn(xb[j], cand, -127.0f, 127.0f));
                num += double(xb[j]) * qc;
                den += qc * qc;
            }
            cand16 = f16_clipped(den > 0 ? float(num / den) : 0.0f);
            const float c = f16_to_f32(cand16);
            for (int j = 0; j < kBlockK; ++j) qn[j] = rtn(xb[j], c, -127.0f, 127.0f);
            const double en = sse(c, qn);
            if (en < err) {
                d16 = cand16;
                err = en;
                std::memcpy(q, qn, sizeof q);
            }
        }
        dout[b] = d16;
        for (int j = 0; j < kBlockK; ++j) codes[b * kBlockK + j] = uint8_t(int(q[j]) + 128);
    }
}

static void quantize_row_q4g32(const float* x, RowScratch& s, GroupData& g, int ri) {
    uint8_t* codes = g.codes.data() + ri * g.k;
    uint16_t* dout = g.p0.data() + ri * g.nb;
    symmetric_scales(s, 8.0, g.fa.data());
    for (int64_t b = 0; b < g.nb; ++b) {
        dout[b] = f16_clipped(g.fa[size_t(b)]);
        const float d = f16_to_f32(dout[b]);
        for (int j = 0; j < kBlockK; ++j)
            codes[b * kBlockK + j] = uint8_t(int(rtn(x[b * kBlockK + j], d, -8.0f, 7.0f)) + 8);
    }
}

static void quantize_row_q4ag32(const float* x, RowScratch& s, GroupData& g, int ri) {
    uint8_t* codes = g.codes.data() + ri * g.k;
    uint16_t* dout = g.p0.data() + ri * g.nb;
    uint16_t* mout = g.p1.data() + ri * g.nb;
    affine_scales(s, 15.0, g.fa.data(), g.fb.data());
    for (int64_t b = 0; b < g.nb; ++b) {
        dout[b] = f16_clipped(g.fa[size_t(b)]);
        mout[b] = f16_clipped(-g.fb[size_t(b)]);
        const float d = f16_to_f32(dout[b]), m = f16_to_f32(mout[b]);
        for (int j = 0; j < kBlockK; ++j)
            codes[b * kBlockK + j] = uint8_t(rtn(x[b * kBlockK + j] - m, d, 0.0f, 15.0f));
    }
}

static void quantize_row_q4k(const float* x, RowScratch& s, GroupData& g, int ri) {
    uint8_t* codes = g.codes.data() + ri * g.k;
    uint16_t* scout = g.p0.data() + ri * g.nb;
    uint16_t* mnout = g.p1.data() + ri * g.nb;
    const float* scale = g.fa.data();
    const float* neg_min = g.fb.data();
    affine_scales(s, 15.0, g.fa.data(), g.fb.data());
    float smax = scale[0], mmax = neg_min[0];
    for (int64_t b = 1; b < g.nb; ++b) {
        smax = std::max(smax, scale[b]);
        mmax = std::max(mmax, neg_min[b]);
    }
    const float row_d = smax / 255.0f, row_m = mmax / 255.0f;
    g.row_d[ri] = row_d;
    g.row_m[ri] = row_m;
    for (int64_t b = 0; b < g.nb; ++b) {
        const float sc = rtn(scale[b], row_d, 0.0f, 255.0f);
        const float mn = rtn(neg_min[b], row_m, 0.0f, 255.0f);
        scout[b] = uint16_t(sc);
        mnout[b] = uint16_t(mn);
        const float qscale = row_d * sc, qmin = row_m * mn;
        for (int j = 0; j < kBlockK; ++j)
            codes[b * kBlockK + j] = uint8_t(rtn(x[b * kBlockK + j] + qmin, qscale, 0.0f, 15.0f));
    }
}

static void quantize_row_q6k(const float* x, RowScratch& s, GroupData& g, int ri) {
    uint8_t* codes = g.codes.data() + ri * g.k;
    uint16_t* scout = g.p0.data() + ri * g.nb;
    const float* scale = g.fa.data();
    symmetric_scales(s, 32.0, g.fa.data());
    float amax = std::fabs(scale[0]);
    for (int64_t b = 1; b < g.nb; ++b) amax = std::max(amax, std::fabs(scale[b]));
    const float row_d = amax / 127.0f;
    g.row_d[ri] = row_d;
    for (int64_t b = 0; b < g.nb; ++b) {
        const float sc = rtn(scale[b], row_d, -127.0f, 127.0f);
        scout[b] = uint16_t(uint8_t(int8_t(sc)));
        const float qscale = row_d * sc;
        for (int j = 0; j < kBlockK; ++j)
            codes[b * kBlockK + j] =
                uint8_t(int(rtn(x[b * kBlockK + j], qscale, -32.0f, 31.0f)) + 32);
    }
}

static inline void store_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, sizeof v); }
static inline void store_f32(uint8_t* p, float v) { std::memcpy(p, &v, sizeof v); }

// The 4-bit record of 8 rows x 32 columns: byte 32 c + 4 row + j holds columns 8 c + j (low
// nibble) and 8 c + 4 + j (high nibble) of the block (docs/weight-formats.md).
static void write_nibble_record(const GroupData& g, int64_t b, uint8_t* rec) {
    for (int ri = 0; ri < kRowPack; ++ri) {
        const uint8_t* c = g.codes.data() + ri * g.k + b * kBlockK;
        for (int ch = 0; ch < 4; ++ch)
            for (int j = 0; j < kStepK; ++j)
                rec[32 * ch + 4 * ri + j] =
                    uint8_t((c[8 * ch + j] & 15) | ((c[8 * ch + 4 + j] & 15) << 4));
    }
}

// Interleaves one row group's codes and scales into the tensor's records (quant.pack).
static void write_group(WeightFormat f, const PackedLayout& lay, int64_t grp, const GroupData& g,
                        uint8_t* out) {
    const int64_t nb = lay.blocks;
    for (int64_t b = 0; b < nb; ++b) {
        const int64_t record = grp * nb + b;
        uint8_t* rec = out + record * quant_record_bytes(f);
        if (f == WeightFormat::kQ8g32) {
            for (int ri = 0; ri < kRowPack; ++ri) {
                const uint8_t* c = g.codes.data() + ri * g.k + b * kBlockK;
                for (int st = 0; st < 8; ++st)
                    for (int j = 0; j < kStepK; ++j) rec[32 * st + 4 * ri + j] = c[4 * st + j];
            }
        } else {
            write_nibble_record(g, b, rec);
            if (f == WeightFormat::kQ6k) {
                for (int ri = 0; ri < kRowPack; ++ri) {
                    const uint8_t* c = g.codes.data() + ri * g.k + b * kBlockK;
                    for (int h = 0; h < 2; ++h)
                        for (int j = 0; j < kStepK; ++j) {
                            int byte = 0;
                            for (int t = 0; t < 4; ++t)
                                byte |= (c[4 * (4 * h + t) + j] >> 4) << (2 * t);
                            rec[kQ6HighOffset + 32 * h + 4 * ri + j] = uint8_t(byte);
                        }
                }
            }
        }
        uint8_t* srec = out + lay.scales_offset + record * scale_record_bytes(f);
        for (int ri = 0; ri < kRowPack; ++ri) {
            const uint16_t a = g.p0[size_t(ri * nb + b)], m = g.p1[size_t(ri * nb + b)];
            switch (f) {
                case WeightFormat::kQ8g32:
                case WeightFormat::kQ4g32: store_u16(srec + 2 * ri, a); break;
                case WeightFormat::kQ4ag32:
                    store_u16(srec + 2 * ri, a);
                    store_u16(srec + 16 + 2 * ri, m);
                    break;
                case WeightFormat::kQ4k:
                    srec[ri] = uint8_t(a);
                    srec[8 + ri] = uint8_t(m);
                    break;
                case WeightFormat::kQ6k: srec[ri] = uint8_t(a); break;
                default: break;
            }
        }
    }
    if (row_param_bytes(f) != 0) {
        uint8_t* p = out + lay.row_params_offset + grp * row_param_bytes(f);
        for (int ri = 0; ri < kRowPack; ++ri) {
            store_f32(p + 4 * ri, g.row_d[ri]);
            if (f == WeightFormat::kQ4k) store_f32(p + 32 + 4 * ri, g.row_m[ri]);
        }
    }
}

static bool quantize_row_groups_impl(WeightFormat f, const PackedLayout& lay, const float* x,
                                     int64_t row0, int64_t n_rows, int64_t g_begin,
                                     int64_t g_end, uint8_t* out, const float* importance) {
    const int64_t k = lay.k, nb = lay.blocks;
    RowScratch scratch(nb, importance);
    GroupData g(k, nb);
    for (int64_t grp = g_begin; grp < g_end; ++grp) {
        g.clear();
        const int64_t r_first = grp * kRowPack;
        for (int ri = 0; ri < kRowPack; ++ri) {
            const int64_t r = r_first + ri;  // absolute row
            if (r < row0 || r >= row0 + n_rows || r >= lay.rows) continue;
            const float* xr = x + (r - row0) * k;
            for (int64_t i = 0; i < k; ++i)
                if (!std::isfinite(xr[i])) return false;
            if (f != WeightFormat::kQ8g32) scratch.load(xr);
            switch (f) {
                case WeightFormat::kQ8g32: quantize_row_q8g32(xr, g, ri); break;
                case WeightFormat::kQ4g32: quantize_row_q4g32(xr, scratch, g, ri); break;
                case WeightFormat::kQ4ag32: quantize_row_q4ag32(xr, scratch, g, ri); break;
                case WeightFormat::kQ4k: quantize_row_q4k(xr, scratch, g, ri); break;
                case WeightFormat::kQ6k: quantize_row_q6k(xr, scratch, g, ri); break;
                default: return false;
            }
        }
        write_group(f, lay, grp, g, out);
    }
    return true;
}
