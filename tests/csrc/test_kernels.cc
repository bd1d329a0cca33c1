// SPDX-License-Identifier: Apache-2.0
// Every kernel family of every table this CPU supports against the `ref` table, on odd shapes,
// tails and extreme values. Exact families (conversions, q8a quantization, packed products,
// dequantization, RoPE) must match bit for bit; float families within the bounds stated in
// kernels/kernels.h. This binary also runs under qemu for the ARM tables (tools/arm_test.sh).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "common.h"
#include "dispatch.h"

namespace {

using qe::BlockQ8A;
using qe::KernelTable;
using qe::PackedMatrix;
using qe::WeightFormat;

std::mt19937& rng() {
    static std::mt19937 r(20260101);
    return r;
}

std::vector<float> normal(size_t n, float scale = 1.0f) {
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng());
    return v;
}

uint32_t bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

// Tables to test against ref (all supported ones but ref itself).
std::vector<const KernelTable*> simd_tables() {
    std::vector<const KernelTable*> out;
    for (const auto* t : qe::supported_tables()) {
        if (std::string(t->tag) != "ref") out.push_back(t);
    }
    return out;
}

const KernelTable& ref() {
    return qe::select_table("ref");
}

// Counts mismatching elements (bitwise) and prints the first.
template <typename T>
void expect_same(const std::vector<T>& got, const std::vector<T>& want, const char* what,
                 const char* tag) {
    size_t bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0) {
            if (bad == 0) {
                std::printf("  FAIL %s [%s]: element %zu differs (%g vs %g)\n", what, tag, i,
                            double(got[i]), double(want[i]));
            }
            ++bad;
        }
    }
    if (bad) ++qe_test::failures();
}

// max |got - want| <= atol + rtol * max|want|; prints the worst error.
void expect_close(const std::vector<float>& got, const std::vector<float>& want, double atol,
                  double rtol, const char* what, const char* tag) {
    double worst = 0, scale = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        worst = std::fmax(worst, std::fabs(double(got[i]) - double(want[i])));
        scale = std::fmax(scale, std::fabs(double(want[i])));
        if (std::isnan(got[i]) != std::isnan(want[i])) worst = INFINITY;
    }
    if (!(worst <= atol + rtol * scale)) {
        std::printf("  FAIL %s [%s]: max abs err %.3g (scale %.3g)\n", what, tag, worst, scale);
        ++qe_test::failures();
    }
}

// A random packed matrix: random code bytes, finite f16 scales, positive q4k row factors.
struct RandomPacked {
    std::vector<uint8_t> bytes;
    PackedMatrix w;
    RandomPacked(WeightFormat f, int64_t rows, int64_t k) {
        qe::PackedLayout layout;
        qe::packed_layout(f, rows, k, &layout);
        bytes.resize(layout.total_bytes);
        std::uniform_int_distribution<int> byte(0, 255);
        for (uint64_t i = 0; i < layout.scales_offset; ++i) bytes[i] = uint8_t(byte(rng()));
        const int64_t records = layout.groups * layout.blocks;
        uint8_t* s = bytes.data() + layout.scales_offset;
        if (qe::row_param_bytes(f) != 0) {  // q4k, q6k: integer sub-scales, float row factors
            for (int64_t i = 0; i < records * qe::scale_record_bytes(f); ++i)
                s[i] = uint8_t(byte(rng()));
            float* rp = reinterpret_cast<float*>(bytes.data() + layout.row_params_offset);
            for (int64_t i = 0; i < layout.groups * qe::row_param_bytes(f) / 4; ++i)
                rp[i] = std::fabs(normal(1)[0]) * 1e-3f;
        } else {
            const int n = f == WeightFormat::kQ4ag32 ? 16 : 8;
            std::vector<float> d = normal(records * n, 0.05f);
            std::vector<uint16_t> h(d.size());
            ref().cvt_f32_f16(d.data(), h.data(), int64_t(d.size()));
            std::memcpy(s, h.data(), h.size() * 2);
        }
        w = PackedMatrix::view(f, layout, bytes.data());
    }
};

std::vector<BlockQ8A> quantize(const KernelTable& t, const std::vector<float>& x, int64_t m,
                               int64_t k) {
    std::vector<BlockQ8A> q(m * k / 32);
    for (int64_t i = 0; i < m; ++i) t.quantize_q8a(x.data() + i * k, q.data() + i * k / 32, k);
    return q;
}

const WeightFormat kPacked[] = {WeightFormat::kQ8g32, WeightFormat::kQ4g32, WeightFormat::kQ4ag32,
                                WeightFormat::kQ4k, WeightFormat::kQ6k};

}  // namespace

QE_TEST(tables_have_every_slot) {
    for (const auto* t : qe::compiled_tables()) {
        for (int i = 0; i < qe::kKernelSlots; ++i) {
            if (qe::kernel_slot(*t, i) == nullptr) {
                std::printf("  FAIL table %s: slot %s is null\n", t->tag, qe::kernel_slot_name(i));
                ++qe_test::failures();
            }
        }
    }
}

QE_TEST(gemm_float_matches_ref) {
    for (const auto* t : simd_tables()) {
        for (int64_t k : {1, 7, 16, 17, 31, 64, 100, 1024}) {
            for (int64_t rows : {1, 3, 8, 13}) {
                for (int64_t m : {1, 2, 5}) {
                    const int64_t ldw = k + 5, ldx = k + 2, ldy = rows + 3;
                    std::vector<float> w = normal(rows * ldw), x = normal(m * ldx);
                    std::vector<uint16_t> h(w.size()), bf(w.size());
                    ref().cvt_f32_f16(w.data(), h.data(), int64_t(w.size()));
                    for (size_t i = 0; i < w.size(); ++i) bf[i] = uint16_t(bits(w[i]) >> 16);
                    std::vector<float> y(m * ldy, 7.0f), yr(m * ldy, 7.0f);
                    const double atol = 2e-6 * k;
                    t->gemm_f32(w.data(), ldw, x.data(), ldx, m, y.data(), ldy, rows, k);
                    ref().gemm_f32(w.data(), ldw, x.data(), ldx, m, yr.data(), ldy, rows, k);
                    expect_close(y, yr, atol, 0, "gemm_f32", t->tag);
                    t->gemm_f16(h.data(), ldw, x.data(), ldx, m, y.data(), ldy, rows, k);
                    ref().gemm_f16(h.data(), ldw, x.data(), ldx, m, yr.data(), ldy, rows, k);
                    expect_close(y, yr, atol, 0, "gemm_f16", t->tag);
                    t->gemm_bf16(bf.data(), ldw, x.data(), ldx, m, y.data(), ldy, rows, k);
                    ref().gemm_bf16(bf.data(), ldw, x.data(), ldx, m, yr.data(), ldy, rows, k);
                    expect_close(y, yr, atol, 0, "gemm_bf16", t->tag);
                    // m = 1 gives the same bits as row 0 of a batch (prompt == decode).
                    std::vector<float> y1(rows);
                    t->gemm_f32(w.data(), ldw, x.data(), ldx, 1, y1.data(), rows, rows, k);
                    t->gemm_f32(w.data(), ldw, x.data(), ldx, m, y.data(), ldy, rows, k);
                    expect_same(y1, std::vector<float>(y.begin(), y.begin() + rows),
                                "gemm_f32 m=1 vs batch", t->tag);
                    std::vector<float> g(rows), gr(rows);
                    t->gemv_f32(w.data(), ldw, x.data(), g.data(), rows, k);
                    ref().gemv_f32(w.data(), ldw, x.data(), gr.data(), rows, k);
                    expect_close(g, gr, atol, 0, "gemv_f32", t->tag);
                }
            }
        }
    }
}

QE_TEST(conversions_match_ref) {
    std::vector<float> x = normal(4096, 100.0f);
    std::uniform_int_distribution<uint32_t> any;
    for (int i = 0; i < 2048; ++i) {
        const uint32_t u = any(rng());
        std::memcpy(&x[i], &u, 4);
    }
    const float specials[] = {0.0f,     -0.0f,   65504.0f, 65520.0f,  65519.996f, 1e-8f,
                              2.98e-8f, 6.1e-5f, INFINITY, -INFINITY, NAN};
    std::memcpy(x.data(), specials, sizeof specials);
    std::vector<uint16_t> all(65536);
    for (int i = 0; i < 65536; ++i) all[i] = uint16_t(i);
    for (const auto* t : simd_tables()) {
        std::vector<uint16_t> h(x.size()), hr(x.size());
        for (int64_t n : {int64_t(x.size()), int64_t(1), int64_t(13)}) {
            t->cvt_f32_f16(x.data(), h.data(), n);
            ref().cvt_f32_f16(x.data(), hr.data(), n);
        }
        expect_same(h, hr, "cvt_f32_f16", t->tag);
        std::vector<float> f(65536), fr(65536);
        t->cvt_f16_f32(all.data(), f.data(), 65536);
        ref().cvt_f16_f32(all.data(), fr.data(), 65536);
        for (int i = 0; i < 65536; ++i) {
            // NaN stays NaN; hardware may quiet a signalling NaN's payload
            if (std::isnan(f[i]) && std::isnan(fr[i])) f[i] = fr[i] = 0.0f;
        }
        expect_same(f, fr, "cvt_f16_f32", t->tag);
        t->cvt_bf16_f32(all.data(), f.data(), 65535);
        ref().cvt_bf16_f32(all.data(), fr.data(), 65535);
        expect_same(f, fr, "cvt_bf16_f32", t->tag);
    }
}

QE_TEST(quantize_q8a_matches_ref) {
    std::vector<float> x = normal(32 * 40, 3.0f);
    for (int j = 0; j < 32; ++j) x[j] = 0.0f;                                    // d = 0
    for (int j = 0; j < 32; ++j) x[32 + j] = (float(j) - 16.0f + 0.5f) * 0.25f;  // ties
    x[32] = 127 * 0.25f;
    for (int j = 0; j < 32; ++j) x[64 + j] = 1e-40f * float(j + 1);   // subnormal block
    for (int j = 0; j < 32; ++j) x[96 + j] = j % 2 ? 3e38f : -3e38f;  // huge
    x[128] = NAN;
    for (const auto* t : simd_tables()) {
        const auto q = quantize(*t, x, 1, int64_t(x.size()));
        const auto qr = quantize(ref(), x, 1, int64_t(x.size()));
        EXPECT_TRUE(std::memcmp(q.data(), qr.data(), q.size() * sizeof(BlockQ8A)) == 0);
    }
}

QE_TEST(packed_products_match_ref_bitwise) {
    for (const auto* t : simd_tables()) {
        for (WeightFormat f : kPacked) {
            for (int64_t rows : {1, 7, 8, 9, 24, 37}) {
                for (int64_t k : {32, 64, 96, 1024}) {
                    RandomPacked p(f, rows, k);
                    for (int64_t m : {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 35}) {
                        std::vector<float> x = normal(m * k);
                        const auto xq = quantize(ref(), x, m, k);
                        const int64_t ldy = rows + 5;
                        std::vector<float> y(m * ldy, -1.0f), yr(m * ldy, -1.0f);
                        // a partial range of row groups, then the rest
                        const int64_t g_mid = p.w.groups / 2;
                        for (auto [g0, g1] : {std::pair<int64_t, int64_t>{0, g_mid},
                                              std::pair<int64_t, int64_t>{g_mid, p.w.groups}}) {
                            if (g0 == g1) continue;
                            if (m == 1) {
                                t->gemv_q8a(p.w, xq.data(), y.data(), g0, g1);
                                ref().gemv_q8a(p.w, xq.data(), yr.data(), g0, g1);
                            } else {
                                t->gemm_q8a(p.w, xq.data(), m, y.data(), ldy, g0, g1);
                                ref().gemm_q8a(p.w, xq.data(), m, yr.data(), ldy, g0, g1);
                            }
                        }
                        const std::string what =
                            std::string(m == 1 ? "gemv_q8a " : "gemm_q8a ") + qe::format_name(f);
                        expect_same(y, yr, what.c_str(), t->tag);  // incl. untouched padding
                    }
                    std::vector<float> row(k), rowr(k);
                    for (int64_t r : {int64_t(0), rows - 1}) {
                        t->dequantize_row(p.w, r, row.data());
                        ref().dequantize_row(p.w, r, rowr.data());
                        expect_same(row, rowr, "dequantize_row", t->tag);
                    }
                }
            }
        }
    }
}

QE_TEST(packed_products_at_the_integer_limits) {
    for (const auto* t : simd_tables()) {
        for (WeightFormat f : kPacked) {
            RandomPacked p(f, 16, 512);
            for (uint8_t fill : {uint8_t(0x00), uint8_t(0xff)}) {
                std::memset(p.bytes.data(), fill,
                            p.w.groups * p.w.blocks * qe::quant_record_bytes(f));
                for (float v : {127.0f, -127.0f}) {
                    std::vector<float> x(3 * 512, v);
                    const auto xq = quantize(ref(), x, 3, 512);
                    std::vector<float> y(3 * 16), yr(3 * 16);
                    t->gemm_q8a(p.w, xq.data(), 3, y.data(), 16, 0, p.w.groups);
                    ref().gemm_q8a(p.w, xq.data(), 3, yr.data(), 16, 0, p.w.groups);
                    expect_same(y, yr, "gemm_q8a limits", t->tag);
                    t->gemv_q8a(p.w, xq.data(), y.data(), 0, p.w.groups);
                    ref().gemv_q8a(p.w, xq.data(), yr.data(), 0, p.w.groups);
                    expect_same(y, yr, "gemv_q8a limits", t->tag);
                }
            }
        }
    }
}

QE_TEST(vector_kernels_match_ref) {
    for (const auto* t : simd_tables()) {
        for (int64_t n : {1, 7, 8, 9, 16, 33, 128, 257}) {
            const int64_t rows = 3;
            std::vector<float> x = normal(rows * n, 5.0f), w = normal(n), z = normal(rows * n, 3);
            std::vector<float> y(rows * n), yr(rows * n);
            t->rms_norm(x.data(), w.data(), y.data(), rows, n, 1e-6f);
            ref().rms_norm(x.data(), w.data(), yr.data(), rows, n, 1e-6f);
            expect_close(y, yr, 1e-6, 2e-6 * std::sqrt(double(n)), "rms_norm", t->tag);
            t->rms_norm_gated(x.data(), w.data(), z.data(), y.data(), rows, n, 1e-6f);
            ref().rms_norm_gated(x.data(), w.data(), z.data(), yr.data(), rows, n, 1e-6f);
            expect_close(y, yr, 1e-6, 4e-6 * std::sqrt(double(n)), "rms_norm_gated", t->tag);
            t->l2_norm(x.data(), y.data(), rows, n, n, 1e-6f, 0.5f);
            ref().l2_norm(x.data(), yr.data(), rows, n, n, 1e-6f, 0.5f);
            expect_close(y, yr, 1e-7, 2e-6 * std::sqrt(double(n)), "l2_norm", t->tag);
            std::vector<float> s = x, sr = x;
            s[0] = sr[0] = -1e30f;
            t->softmax(s.data(), rows * n);
            ref().softmax(sr.data(), rows * n);
            expect_close(s, sr, 1e-7, 1e-5, "softmax", t->tag);
            x[0] = -100.0f;
            if (n > 1) x[1] = 100.0f;
            t->silu_mul(x.data(), z.data(), y.data(), rows * n);
            ref().silu_mul(x.data(), z.data(), yr.data(), rows * n);
            expect_close(y, yr, 1e-30, 4e-6, "silu_mul", t->tag);
            t->sigmoid_mul(z.data(), x.data(), y.data(), rows * n);
            ref().sigmoid_mul(z.data(), x.data(), yr.data(), rows * n);
            expect_close(y, yr, 1e-30, 4e-6, "sigmoid_mul", t->tag);
        }
        for (int64_t half : {1, 4, 19, 32, 64}) {
            const int64_t heads = 3, ld = 2 * half + 7;
            std::vector<float> x = normal(heads * ld), c = normal(half), s = normal(half);
            std::vector<float> xr = x;
            t->rope(x.data(), heads, ld, c.data(), s.data(), half);
            ref().rope(xr.data(), heads, ld, c.data(), s.data(), half);
            expect_same(x, xr, "rope", t->tag);
        }
    }
}

QE_TEST(delta_net_kernels_match_ref) {
    for (const auto* t : simd_tables()) {
        for (auto [tn, c, kw] :
             {std::tuple<int64_t, int64_t, int64_t>{1, 5, 4}, {3, 33, 4}, {17, 64, 4}, {2, 7, 2}}) {
            // a slice of c channels out of c + 9 (row stride ldc), as the threads use it
            const int64_t ldc = c + 9;
            std::vector<float> w = normal(kw * ldc), st = normal((kw - 1) * ldc);
            std::vector<float> x = normal(tn * c), str = st, y(tn * c), yr(tn * c);
            t->conv1d_silu(w.data(), st.data(), ldc, x.data(), c, y.data(), c, tn, c, kw);
            ref().conv1d_silu(w.data(), str.data(), ldc, x.data(), c, yr.data(), c, tn, c, kw);
            expect_close(y, yr, 1e-6, 1e-5, "conv1d_silu", t->tag);
            expect_same(st, str, "conv1d_silu state", t->tag);
        }
        for (auto [tn, dk, dv] : {std::tuple<int64_t, int64_t, int64_t>{1, 4, 4},
                                  {5, 16, 8},
                                  {40, 128, 128},
                                  {7, 13, 9},
                                  {3, 32, 17},
                                  {6, 128, 96},    // whole tiles and a remainder
                                  {4, 160, 80}}) {  // dk past the tile buffer: in place
            const int64_t ld = 2 * dk + dv;
            std::vector<float> u = normal(tn * ld, 0.3f), s = normal(dk * dv);
            std::vector<float> gates(2 * tn);
            std::uniform_real_distribution<float> unit(0.0f, 1.0f);
            for (auto& g : gates) g = unit(rng());
            std::vector<float> sr = s, o(tn * dv), orf(tn * dv);
            t->delta_rule(s.data(), u.data(), u.data() + dk, u.data() + 2 * dk, ld, gates.data(),
                          gates.data() + tn, 1, o.data(), dv, tn, dk, dv);
            ref().delta_rule(sr.data(), u.data(), u.data() + dk, u.data() + 2 * dk, ld,
                             gates.data(), gates.data() + tn, 1, orf.data(), dv, tn, dk, dv);
            expect_close(o, orf, 1e-6, 1e-5, "delta_rule out", t->tag);
            expect_close(s, sr, 1e-6, 1e-5, "delta_rule state", t->tag);
        }
    }
}

// The 4-bit keys' quads as formats.h documents them: the 16 bits of quad p of position l,
// spread by (x | x << 12) & 0x0f0f0f0f, are the codes of elements 4p .. 4p + 3 plus 8 in byte
// order, what the byte dot products of every table rely on; key_code reads the same codes.
QE_TEST(kv_q4_key_quads_spread_to_bytes_in_order) {
    const int64_t d = 64;
    std::vector<float> x(size_t(17 * d));
    // Integers -7..7 in an order that puts all 15 in every block of 32: each block's scale
    // is 1 and its codes are its elements.
    for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i * 7 % 15) - 7);
    std::vector<qe::KeyGroupQ4> k(size_t(qe::kv_groups(17, d)));
    qe::quantize_keys_q4(x.data(), k.data(), 17, d);
    for (int64_t j = 0; j < 17; ++j) {
        for (int64_t b = 0; b < d / qe::kBlockK; ++b) {
            const qe::KeyGroupQ4& g = k[size_t(j / qe::kKvGroup * (d / qe::kBlockK) + b)];
            const int l = int(j % qe::kKvGroup);
            EXPECT_TRUE(g.d[l] == 1.0f);
            for (int p = 0; p < qe::kBlockK / 4; ++p) {
                const uint32_t w = uint32_t(g.q[p][l][0]) | uint32_t(g.q[p][l][1]) << 8;
                const uint32_t spread = (w | w << 12) & 0x0f0f0f0fu;
                for (int i = 0; i < 4; ++i) {
                    const int e = 4 * p + i;
                    const int want = int(x[size_t(j * d + b * qe::kBlockK + e)]);
                    EXPECT_TRUE(int(spread >> 8 * i & 0xff) - 8 == want);
                    EXPECT_TRUE(qe::key_code(g, l, e) == want);
                }
            }
        }
    }
}

QE_TEST(attention_matches_ref) {
    for (const auto* t : simd_tables()) {
        for (auto [n_q, n, d] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 16},
                                 {4, 9, 32},
                                 {4, 130, 256},
                                 {3, 17, 24},
                                 {2, 5, 5},
                                 {4, 256, 40},  // one whole tile of the streaming softmax
                                 {4, 257, 40},  // and one more position
                                 {3, 700, 64},  // ragged last tile
                                 {2, 1000, 13}}) {
            std::vector<float> q = normal(n_q * d), k = normal(n * d), v = normal(n * d);
            std::vector<uint16_t> k16(k.size()), v16(v.size());
            ref().cvt_f32_f16(k.data(), k16.data(), int64_t(k.size()));
            ref().cvt_f32_f16(v.data(), v16.data(), int64_t(v.size()));
            // Exactly the contract's scratch (the sanitizer build catches a write past it).
            std::vector<float> scratch(size_t(qe::attention_scratch(n_q, n)));
            std::vector<float> o(n_q * d), orf(n_q * d);
            t->attention_f16(q.data(), d, n_q * d, n_q, 1, k16.data(), v16.data(), n, d, 0.2f,
                             scratch.data(), o.data(), d, n_q * d);
            ref().attention_f16(q.data(), d, n_q * d, n_q, 1, k16.data(), v16.data(), n, d, 0.2f,
                                scratch.data(), orf.data(), d, n_q * d);
            expect_close(o, orf, 1e-5, 1e-5, "attention_f16", t->tag);
            t->attention_f32(q.data(), d, n_q * d, n_q, 1, k.data(), v.data(), n, d, 0.2f,
                             scratch.data(), o.data(), d, n_q * d);
            ref().attention_f32(q.data(), d, n_q * d, n_q, 1, k.data(), v.data(), n, d, 0.2f,
                                scratch.data(), orf.data(), d, n_q * d);
            expect_close(o, orf, 1e-5, 1e-5, "attention_f32", t->tag);
            if (d % qe::kBlockK == 0) {  // the int8 cache, in groups of 16 positions
                std::vector<qe::KeyGroupQ8> k8(size_t(qe::kv_groups(n, d)));
                std::vector<qe::ValueGroupQ8> v8(k8.size());
                qe::quantize_keys_q8(k.data(), k8.data(), n, d);
                qe::quantize_values_q8(v.data(), v8.data(), n, d);
                t->attention_q8(q.data(), d, n_q * d, n_q, 1, k8.data(), v8.data(), n, d, 0.2f,
                                scratch.data(), o.data(), d, n_q * d);
                // Every SIMD table's weighted sum is in integers (kernels.h): so is their
                // reference's. A weight whose product lies near a rounding midpoint rounds the
                // other way under the kernel's exp, moving the output by up to 127 / 32767 of
                // the tile's largest term: a few of those are the 1e-4 allowed.
                const bool integers = t->attention_q8 != ref().attention_q8;
                (integers ? qe::ref::attention_q8_integer_weights : ref().attention_q8)(
                    q.data(), d, n_q * d, n_q, 1, k8.data(), v8.data(), n, d, 0.2f,
                    scratch.data(), orf.data(), d, n_q * d);
                expect_close(o, orf, 1e-5, integers ? 1e-4 : 1e-5, "attention_q8", t->tag);
                // The 4-bit cache: the same arithmetic on the nibbles' codes.
                std::vector<qe::KeyGroupQ4> k4(k8.size());
                std::vector<qe::ValueGroupQ4> v4(k8.size());
                qe::quantize_keys_q4(k.data(), k4.data(), n, d);
                qe::quantize_values_q4(v.data(), v4.data(), n, d);
                t->attention_q4(q.data(), d, n_q * d, n_q, 1, k4.data(), v4.data(), n, d, 0.2f,
                                scratch.data(), o.data(), d, n_q * d);
                const bool integers4 = t->attention_q4 != ref().attention_q4;
                (integers4 ? qe::ref::attention_q4_integer_weights : ref().attention_q4)(
                    q.data(), d, n_q * d, n_q, 1, k4.data(), v4.data(), n, d, 0.2f,
                    scratch.data(), orf.data(), d, n_q * d);
                expect_close(o, orf, 1e-5, integers4 ? 1e-4 : 1e-5, "attention_q4", t->tag);
            }
        }
    }
}

// Several tokens per call (prefill): token r over its own first n - (n_t - 1 - r) positions
// must give, bit for bit, what a one-token call gives on every table (ref too), also where
// the tokens' last positions straddle a tile boundary and where runs split a token's heads;
// and so must each head alone (n_q = 1), whatever runs its group went in.
QE_TEST(attention_tokens_equal_one_at_a_time) {
    for (const auto* t : qe::supported_tables()) {
        for (auto [n_q, n_t, n, d] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{4, 1, 1, 16},
                                      {4, 3, 3, 32},
                                      {4, 6, 260, 256},  // last positions 255..260
                                      {3, 5, 17, 24},
                                      {1, 13, 40, 8},
                                      {5, 7, 513, 13},
                                      {2, 11, 256, 64},  // exactly one tile for the last token
                                      {4, 32, 700, 40}}) {
            const int64_t ld = n_q * d;
            std::vector<float> q = normal(n_t * ld), k = normal(n * d), v = normal(n * d);
            std::vector<uint16_t> k16(k.size()), v16(v.size());
            ref().cvt_f32_f16(k.data(), k16.data(), int64_t(k.size()));
            ref().cvt_f32_f16(v.data(), v16.data(), int64_t(v.size()));
            std::vector<qe::KeyGroupQ8> k8;
            std::vector<qe::ValueGroupQ8> v8;
            std::vector<qe::KeyGroupQ4> k4;
            std::vector<qe::ValueGroupQ4> v4;
            if (d % qe::kBlockK == 0) {
                k8.resize(size_t(qe::kv_groups(n, d)));
                v8.resize(k8.size());
                k4.resize(k8.size());
                v4.resize(k8.size());
                qe::quantize_keys_q8(k.data(), k8.data(), n, d);
                qe::quantize_values_q8(v.data(), v8.data(), n, d);
                qe::quantize_keys_q4(k.data(), k4.data(), n, d);
                qe::quantize_values_q4(v.data(), v4.data(), n, d);
            }
            std::vector<float> scratch(size_t(qe::attention_scratch(n_t * n_q, n)));
            for (int kind = 0; kind < 4; ++kind) {
                if (kind >= 2 && k8.empty()) continue;
                auto call = [&](const float* qr, int64_t heads, int64_t tokens, int64_t len,
                                float* out) {
                    if (kind == 0) {
                        t->attention_f16(qr, d, ld, heads, tokens, k16.data(), v16.data(), len, d,
                                         0.2f, scratch.data(), out, d, ld);
                    } else if (kind == 1) {
                        t->attention_f32(qr, d, ld, heads, tokens, k.data(), v.data(), len, d,
                                         0.2f, scratch.data(), out, d, ld);
                    } else if (kind == 2) {
                        t->attention_q8(qr, d, ld, heads, tokens, k8.data(), v8.data(), len, d,
                                        0.2f, scratch.data(), out, d, ld);
                    } else {
                        t->attention_q4(qr, d, ld, heads, tokens, k4.data(), v4.data(), len, d,
                                        0.2f, scratch.data(), out, d, ld);
                    }
                };
                std::vector<float> all(n_t * ld), one(n_t * ld), alone(n_t * ld);
                call(q.data(), n_q, n_t, n, all.data());
                for (int64_t r = 0; r < n_t; ++r) {
                    call(q.data() + r * ld, n_q, 1, n - (n_t - 1 - r), one.data() + r * ld);
                    for (int64_t i = 0; i < n_q; ++i) {
                        call(q.data() + r * ld + i * d, 1, 1, n - (n_t - 1 - r),
                             alone.data() + r * ld + i * d);
                    }
                }
                static const char* names[] = {"attention_f16 tokens", "attention_f32 tokens",
                                              "attention_q8 tokens", "attention_q4 tokens"};
                static const char* alone_names[] = {
                    "attention_f16 heads alone", "attention_f32 heads alone",
                    "attention_q8 heads alone", "attention_q4 heads alone"};
                expect_same(all, one, names[kind], t->tag);
                expect_same(all, alone, alone_names[kind], t->tag);
            }
        }
    }
}