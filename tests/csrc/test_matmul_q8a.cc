// SPDX-License-Identifier: Apache-2.0
// The quantized families on every table this CPU supports (natively and under qemu as three
// ARM CPUs) against the `ref` table: quantize_q8a, gemv_q8a, gemm_q8a and dequantize_row for
// every packed format. All of them are exact contracts, so outputs are compared bit for bit
// (NaN equals NaN): odd row counts (padding rows), row-group sub-ranges, 1..17 tokens (every
// tile shape and tail), one block, an odd number of blocks and model widths, and extreme scales
// that overflow to inf. One test also checks ref itself against the dequantized float product.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "dispatch.h"

namespace {

using qe::BlockQ8A;
using qe::PackedMatrix;
using qe::WeightFormat;

constexpr WeightFormat kFormats[] = {WeightFormat::kQ8g32, WeightFormat::kQ4g32,
                                     WeightFormat::kQ4ag32, WeightFormat::kQ4k, WeightFormat::kQ6k};

// Scale magnitudes a test matrix is built with.
enum class Scales { kTypical, kExtreme };

// A packed matrix with random codes and random scales; owns its bytes.
struct TestMatrix {
    std::vector<uint8_t> bytes;
    PackedMatrix w;
};

// A random IEEE half with the exponent field drawn from [e_lo, e_hi] (0 = subnormal, 30 = the
// largest finite binade) and a random sign.
uint16_t random_half(std::mt19937& rng, int e_lo, int e_hi) {
    const uint32_t e = e_lo + rng() % (e_hi - e_lo + 1);
    return uint16_t(((rng() & 1) << 15) | (e << 10) | (rng() & 0x3ff));
}

TestMatrix make_matrix(WeightFormat f, int64_t rows, int64_t k, uint32_t seed, Scales scales) {
    std::mt19937 rng(seed);
    qe::PackedLayout layout;
    QE_CHECK(qe::packed_layout(f, rows, k, &layout), "bad test shape");
    TestMatrix m;
    m.bytes.assign(layout.total_bytes, 0);
    // Every byte pattern is a valid code; padding rows are random too (kernels must not care).
    const uint64_t qbytes = layout.scales_offset;
    for (uint64_t i = 0; i < qbytes; ++i) m.bytes[i] = uint8_t(rng());
    const uint64_t records = uint64_t(layout.groups * layout.blocks);
    uint8_t* s = m.bytes.data() + layout.scales_offset;
    const bool extreme = scales == Scales::kExtreme;
    for (uint64_t i = 0; i < records * qe::scale_record_bytes(f); i += 2) {
        uint16_t h;
        if (f == WeightFormat::kQ4k || f == WeightFormat::kQ6k) {
            h = uint16_t(rng());  // two u8 sub-scales / minimums (q6k: two i8 sub-scales)
        } else if (extreme) {
            const int pick = rng() % 3;  // subnormal, tiny normal or near-max binade
            h = pick == 0 ? random_half(rng, 0, 0)
                          : (pick == 1 ? random_half(rng, 1, 2) : random_half(rng, 29, 30));
        } else {
            h = random_half(rng, 5, 11);  // ~1e-4 .. 2e-2, like real group scales
        }
        std::memcpy(s + i, &h, 2);
    }
    if (qe::row_param_bytes(f) != 0) {
        float* rp = reinterpret_cast<float*>(m.bytes.data() + layout.row_params_offset);
        std::uniform_real_distribution<float> u(extreme ? 1e30f : 1e-4f, extreme ? 3e38f : 1e-2f);
        for (int64_t i = 0; i < layout.groups * qe::row_param_bytes(f) / 4; ++i)
            rp[i] = u(rng) * (rng() & 1 ? 1 : -1);
    }
    m.w = PackedMatrix::view(f, layout, m.bytes.data());
    return m;
}

// m rows of k activations quantized by ref (the kernels' input contract: |q| <= 127).
std::vector<BlockQ8A> make_activations(int64_t m, int64_t k, uint32_t seed, float scale) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    std::vector<float> x(m * k);
    for (auto& v : x) v = normal(rng) * scale;
    std::vector<BlockQ8A> out(m * (k / qe::kBlockK));
    const auto& ref = qe::select_table("ref");
    for (int64_t t = 0; t < m; ++t)
        ref.quantize_q8a(x.data() + t * k, out.data() + t * (k / qe::kBlockK), k);
    return out;
}

bool same_bits(float a, float b) {
    if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
    uint32_t ua, ub;
    std::memcpy(&ua, &a, 4);
    std::memcpy(&ub, &b, 4);
    return ua == ub;
}

// Counts outputs that differ from ref; prints the first few and a per-case summary line.
struct Diff {
    const char* what;
    std::string tag;
    int64_t compared = 0, differ = 0;
    double max_abs = 0.0;

    void check(float got, float want, const char* where) {
        ++compared;
        if (same_bits(got, want)) return;
        if (differ++ < 3)
            std::printf("    %s %s: %s got %.9g, ref %.9g\n", tag.c_str(), what, where, got, want);
        if (std::isfinite(got) && std::isfinite(want))
            max_abs = std::fmax(max_abs, std::fabs(double(got) - double(want)));
    }
    void report() {
        std::printf("  %-13s %-16s %8lld outputs, %lld differ (max abs %.3g)\n", tag.c_str(), what,
                    (long long)compared, (long long)differ, max_abs);
        EXPECT_TRUE(differ == 0);
    }
};

constexpr float kCanary = -12345.678f;  // written before each call; must survive outside ranges

// Outputs compared per table tag (gemv + gemm), printed at the end of each test.
std::vector<std::pair<std::string, int64_t>>& compared_counts() {
    static std::vector<std::pair<std::string, int64_t>> counts;
    return counts;
}
void count_compared(const char* tag, int64_t n) {
    for (auto& [t, c] : compared_counts()) {
        if (t == tag) {
            c += n;
            return;
        }
    }
    compared_counts().emplace_back(tag, n);
}
void report_compared(const char* what) {
    for (const auto& [t, c] : compared_counts())
        std::printf("  %-13s %s: %lld outputs bit-identical to ref\n", t.c_str(), what,
                    (long long)c);
    compared_counts().clear();
}

// gemv and gemm of one matrix on every supported table, against ref, rows of groups
// [g_begin, g_end) only; everything outside must stay untouched.
void check_products(const TestMatrix& tm, int64_t m, int64_t g_begin, int64_t g_end,
                    const std::vector<BlockQ8A>& x, const char* label) {
    const PackedMatrix& w = tm.w;
    const auto& ref = qe::select_table("ref");
    const int64_t ldy = w.rows_padded + 5;  // wider than the matrix: a gap the kernels must skip
    std::vector<float> y_ref(m * ldy, kCanary), y(m * ldy);
    ref.gemm_q8a(w, x.data(), m, y_ref.data(), ldy, g_begin, g_end);
    std::vector<float> y1_ref(w.rows_padded, kCanary), y1(w.rows_padded);
    ref.gemv_q8a(w, x.data(), y1_ref.data(), g_begin, g_end);
    for (const auto* t : qe::supported_tables()) {
        Diff dg{"gemm_q8a", std::string(t->tag) + " " + qe::format_name(w.format) + " " + label};
        std::fill(y.begin(), y.end(), kCanary);
        t->gemm_q8a(w, x.data(), m, y.data(), ldy, g_begin, g_end);
        char where[64];
        for (int64_t i = 0; i < m * ldy; ++i) {
            std::snprintf(where, sizeof where, "[t=%lld, r=%lld]", (long long)(i / ldy),
                          (long long)(i % ldy));
            dg.check(y[i], y_ref[i], where);
        }
        if (dg.differ) dg.report();

        Diff dv{"gemv_q8a", dg.tag};
        std::fill(y1.begin(), y1.end(), kCanary);
        t->gemv_q8a(w, x.data(), y1.data(), g_begin, g_end);
        for (int64_t r = 0; r < w.rows_padded; ++r) {
            std::snprintf(where, sizeof where, "[r=%lld]", (long long)r);
            dv.check(y1[r], y1_ref[r], where);
        }
        if (dv.differ) dv.report();
        if (!dg.differ && !dv.differ) count_compared(t->tag, dg.compared + dv.compared);
    }
}

}  // namespace

QE_TEST(quantize_q8a_matches_ref_exactly) {
    const auto& ref = qe::select_table("ref");
    std::mt19937 rng(77);
    std::normal_distribution<float> normal;
    for (const int64_t k : {32, 96, 1024, 3584 + 32}) {
        for (int kind = 0; kind < 5; ++kind) {
            std::vector<float> x(k);
            for (int64_t i = 0; i < k; ++i) {
                const int64_t b = i / 32;
                switch (kind) {
                    case 0: x[i] = normal(rng); break;
                    case 1: x[i] = normal(rng) * 1e37f; break;  // near FLT_MAX, inv tiny
                    case 2: x[i] = normal(rng) * 2e-36f; break; // d near FLT_MIN, inv huge
                    case 3:  // every third block all zero (d = 0), others with exact ties
                        x[i] = b % 3 == 0 ? 0.0f : float(int(rng() % 255) - 127) + 0.5f;
                        if (i % 32 == 0 && b % 3 != 0) x[i] = 127.0f;  // amax 127 -> d = 1
                        break;
                    default:  // mixed magnitudes and signed zeros in one block
                        x[i] = (i % 7 == 0) ? -0.0f : normal(rng) * (i % 2 ? 1e-20f : 1e20f);
                }
            }
            const int64_t nb = k / 32;
            std::vector<BlockQ8A> want(nb), got(nb);
            ref.quantize_q8a(x.data(), want.data(), k);
            for (const auto* t : qe::supported_tables()) {
                std::memset(got.data(), 0x5a, nb * sizeof(BlockQ8A));
                t->quantize_q8a(x.data(), got.data(), k);
                int64_t bad = 0;
                for (int64_t b = 0; b < nb; ++b) {
                    const bool same = same_bits(got[b].d, want[b].d) &&
                                      got[b].sum == want[b].sum &&
                                      std::memcmp(got[b].q, want[b].q, 32) == 0;
                    if (!same && bad++ < 2)
                        std::printf("    %s k=%lld kind=%d block %lld: d %.9g/%.9g sum %d/%d\n",
                                    t->tag, (long long)k, kind, (long long)b, got[b].d, want[b].d,
                                    got[b].sum, want[b].sum);
                }
                EXPECT_TRUE(bad == 0);
                if (k == 32 && kind == 0) std::printf("  %s quantize_q8a checked\n", t->tag);
            }
        }
    }
}

QE_TEST(quantize_q8a_survives_non_finite_input) {
    // inf and NaN activations have no defined quantization, but no table may crash on them, and
    // every code stays in range.
    std::vector<float> x(64, 1.0f);
    x[3] = INFINITY;
    x[40] = NAN;
    std::vector<BlockQ8A> out(2);
    for (const auto* t : qe::supported_tables()) {
        t->quantize_q8a(x.data(), out.data(), 64);
        for (const auto& b : out) {
            for (const int8_t q : b.q) EXPECT_TRUE(q >= -127 && q <= 127);
        }
    }
}

QE_TEST(gemv_gemm_q8a_match_ref_exactly) {
    struct Shape {
        int64_t rows, k;
    };
    // rows: one, a group minus one, a group, a group plus one, a prime; k: one block, three
    // blocks, the 0.8B hidden width, the 0.8B MLP width plus one block.
    const Shape shapes[] = {{1, 32}, {7, 96}, {8, 32}, {9, 1024}, {37, 96}, {13, 3584 + 32}};
    uint32_t seed = 100;
    for (const WeightFormat f : kFormats) {
        for (const Shape& s : shapes) {
            const TestMatrix tm = make_matrix(f, s.rows, s.k, ++seed, Scales::kTypical);
            // Every token tile (1-8) alone and as the tail after a tile of 8 (9-15), so each
            // tile shape of every table is compared; 17 = two tiles of 8 and one token.
            const int64_t m_max = s.k > 1024 ? 7 : 17;
            for (int64_t m = 1; m <= m_max; m += (m < 15 ? 1 : 2)) {
                const auto x = make_activations(m, s.k, ++seed, 1.0f);
                check_products(tm, m, 0, tm.w.groups, x, "all groups");
            }
            if (tm.w.groups > 2) {  // a sub-range of groups, as one thread's share
                const auto x = make_activations(6, s.k, ++seed, 1.0f);
                check_products(tm, 6, 1, tm.w.groups - 1, x, "inner groups");
            }
        }
        // A prompt's worth of tokens at the MLP width: kernels that cut the tokens into chunks
        // (avx512_vnni: 72 at this k) cross a chunk boundary, with 8-, 4- and 3-token tails.
        const TestMatrix tm = make_matrix(f, 24, 3584 + 32, ++seed, Scales::kTypical);
        const auto x = make_activations(83, 3584 + 32, ++seed, 1.0f);
        check_products(tm, 83, 0, tm.w.groups, x, "83 tokens");
        // k past what the x86 kernels' per-chunk buffer of block sums holds for 8 tokens
        const TestMatrix wide = make_matrix(f, 9, 32768 + 64, ++seed, Scales::kTypical);
        const auto xw = make_activations(9, 32768 + 64, ++seed, 1.0f);
        check_products(wide, 9, 0, wide.w.groups, xw, "k = 32832");
    }
    report_compared("gemv_q8a + gemm_q8a");
}

QE_TEST(gemv_gemm_q8a_extreme_values_match_ref) {
    // Scales from f16 subnormals to 65504 with activations up to 1e37: products overflow to
    // +-inf and inf - inf gives NaN in some rows; every table must produce ref's bits anyway.
    uint32_t seed = 900;
    for (const WeightFormat f : kFormats) {
        const TestMatrix tm = make_matrix(f, 21, 160, ++seed, Scales::kExtreme);
        for (const float scale : {1e-30f, 1.0f, 1e37f}) {
            const auto x = make_activations(5, 160, ++seed, scale);
            check_products(tm, 5, 0, tm.w.groups, x, "extreme");
        }
    }
    report_compared("gemv_q8a + gemm_q8a, extreme values");
}

QE_TEST(dequantize_row_matches_ref_exactly) {
    const auto& ref = qe::select_table("ref");
    uint32_t seed = 500;
    for (const WeightFormat f : kFormats) {
        for (const Scales sc : {Scales::kTypical, Scales::kExtreme}) {
            const TestMatrix tm = make_matrix(f, 11, 96, ++seed, sc);
            std::vector<float> want(tm.w.k), got(tm.w.k);
            for (const auto* t : qe::supported_tables()) {
                Diff d{"dequantize_row", std::string(t->tag) + " " + qe::format_name(f)};
                for (int64_t r = 0; r < tm.w.rows_padded; ++r) {
                    ref.dequantize_row(tm.w, r, want.data());
                    t->dequantize_row(tm.w, r, got.data());
                    for (int64_t i = 0; i < tm.w.k; ++i) d.check(got[i], want[i], "element");
                }
                if (d.differ || sc == Scales::kTypical) d.report();
            }
        }
    }
}

QE_TEST(ref_q8a_product_is_the_dequantized_product) {
    // Anchors ref (and so every table) to the math: the quantized product equals
    // sum_k dequant(W)[r, k] * d_x * q_x[k] up to float32 rounding of the per-block sums.
    const auto& ref = qe::select_table("ref");
    uint32_t seed = 700;
    for (const WeightFormat f : kFormats) {
        const TestMatrix tm = make_matrix(f, 19, 256, ++seed, Scales::kTypical);
        const auto x = make_activations(1, 256, ++seed, 1.0f);
        std::vector<float> y(tm.w.rows_padded), row(tm.w.k);
        ref.gemv_q8a(tm.w, x.data(), y.data(), 0, tm.w.groups);
        double worst = 0.0;
        for (int64_t r = 0; r < tm.w.rows; ++r) {
            ref.dequantize_row(tm.w, r, row.data());
            double want = 0.0, mag = 0.0;
            for (int64_t i = 0; i < tm.w.k; ++i) {
                const double xv = double(x[i / 32].d) * x[i / 32].q[i % 32];
                want += double(row[i]) * xv;
                mag += std::fabs(double(row[i]) * xv);
            }
            // float32 block combination: a few eps per block relative to sum |w x|.
            const double err = std::fabs(y[r] - want) / (mag + 1e-30);
            worst = std::fmax(worst, err);
            EXPECT_TRUE(err < 8 * 8 * 1.2e-7);
        }
        std::printf("  ref %-6s vs float64 dequantized product: max rel err %.2e\n",
                    qe::format_name(f), worst);
    }
}
