// SPDX-License-Identifier: Apache-2.0
// The export quantizers (quant/quantize.h): the f16 rounding, bytes equal to Python's on a fixed
// input (the goldens are checked against qwen_edge.formats.quant by
// tests/formats/test_quantize.py, so this binary proves byte equality on every CPU it runs on,
// ARM under qemu included), independence from how rows are split into chunks and row groups,
// padding left zero, non-finite input refused, and the dequantized error.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "check.h"
#include "dispatch.h"
#include "quant/formats.h"
#include "quant/quantize.h"

namespace {

using qe::PackedLayout;
using qe::WeightFormat;

constexpr WeightFormat kPacked[] = {WeightFormat::kQ8g32, WeightFormat::kQ4g32,
                                    WeightFormat::kQ4ag32, WeightFormat::kQ4k,
                                    WeightFormat::kQ6k};

// test_quantize.py golden_input: an LCG's values on a 1/256 grid (every 97th on a 1/8 grid).
std::vector<float> golden_input(int64_t rows, int64_t k) {
    std::vector<float> out(size_t(rows * k));
    uint64_t state = 12345;
    for (size_t i = 0; i < out.size(); ++i) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        const int64_t v = int64_t((state >> 33) % 2001) - 1000;
        out[i] = float(v) / (i % 97 ? 256.0f : 8.0f);
    }
    return out;
}

uint64_t fnv1a(const std::vector<uint8_t>& data) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint8_t b : data) h = (h ^ b) * 0x100000001b3ull;
    return h;
}

PackedLayout layout_of(WeightFormat f, int64_t rows, int64_t k) {
    PackedLayout lay;
    qe::packed_layout(f, rows, k, &lay);
    return lay;
}

// The whole matrix in one call.
std::vector<uint8_t> quantize(WeightFormat f, const std::vector<float>& x, int64_t rows,
                              int64_t k, const char* isa = "") {
    const PackedLayout lay = layout_of(f, rows, k);
    std::vector<uint8_t> out(lay.total_bytes, 0);
    EXPECT_TRUE(
        qe::quantize_row_groups(f, lay, x.data(), 0, rows, 0, lay.groups, out.data(), isa));
    return out;
}

std::vector<const char*> isas() {
    int n = 0;
    const char* const* p = qe::quantizer_isas(&n);
    return std::vector<const char*>(p, p + n);
}

}  // namespace

QE_TEST(quantize_f16_rounding) {
    // Every half round-trips; the midpoint between neighbours rounds to the even one.
    int bad = 0;
    for (uint32_t h = 0; h < 0x7c00; ++h) {
        const float f = qe::f16_to_f32(uint16_t(h));
        if (qe::f32_to_f16(f) != h || qe::f32_to_f16(-f) != (h | 0x8000u)) ++bad;
        if (h + 1 < 0x7c00) {
            const float mid = 0.5f * (f + qe::f16_to_f32(uint16_t(h + 1)));
            const uint16_t even = (h & 1u) ? uint16_t(h + 1) : uint16_t(h);
            if (qe::f32_to_f16(mid) != even) ++bad;
        }
    }
    EXPECT_TRUE(bad == 0);
    EXPECT_TRUE(qe::f32_to_f16(65519.0f) == 0x7bff);  // below the rounding edge of 65504
    EXPECT_TRUE(qe::f32_to_f16(65520.0f) == 0x7c00);  // rounds to infinity
    EXPECT_TRUE(qe::f32_to_f16(1e-9f) == 0);          // under half the smallest subnormal
    EXPECT_TRUE(qe::f32_to_f16(INFINITY) == 0x7c00);
    EXPECT_TRUE((qe::f32_to_f16(NAN) & 0x7c00) == 0x7c00 && (qe::f32_to_f16(NAN) & 0x3ff) != 0);
}

QE_TEST(quantize_goldens_equal_python) {
    // fnv1a-64 of qwen_edge.formats.quant.quantize(fmt, golden_input(11, 96)).
    const uint64_t goldens[] = {0x2455981fce8e2c86ull, 0x97e81746f9da0289ull, 0x3ca714f141dc38bbull,
                                 0x9c176a115363e119ull, 0x2cf10f289af51432ull};
    const std::vector<float> x = golden_input(11, 96);
    EXPECT_TRUE(!isas().empty() && std::string(isas().back()) == "base");
    for (const char* isa : isas()) {
        for (int i = 0; i < 5; ++i) {
            const uint64_t h = fnv1a(quantize(kPacked[i], x, 11, 96, isa));
            if (h != goldens[i])
                std::printf("  %s %s: fnv1a 0x%016llx\n", isa, qe::format_name(kPacked[i]),
                            static_cast<unsigned long long>(h));
            EXPECT_TRUE(h == goldens[i]);
        }
    }
}

QE_TEST(quantize_split_invariance) {
    // Chunks of rows (row0 a multiple of 8, a short tail) and single row groups write the same
    // bytes as one call; padding rows stay zero bytes.
    const int64_t rows = 37, k = 160;
    std::vector<float> x = golden_input(rows, k);
    for (size_t i = 0; i < x.size(); i += 3) x[i] *= 0.01f;
    for (WeightFormat f : kPacked) {
        const std::vector<uint8_t> whole = quantize(f, x, rows, k);
        for (const char* isa : isas()) EXPECT_TRUE(quantize(f, x, rows, k, isa) == whole);
        const PackedLayout lay = layout_of(f, rows, k);
        std::vector<uint8_t> parts(lay.total_bytes, 0);
        for (int64_t r0 = 0; r0 < rows; r0 += 16) {
            const int64_t n = rows - r0 < 16 ? rows - r0 : 16;
            const int64_t g0 = r0 / qe::kRowPack, g1 = (r0 + n + qe::kRowPack - 1) / qe::kRowPack;
            for (int64_t g = g1 - 1; g >= g0; --g)  // one group at a time, backwards
                EXPECT_TRUE(qe::quantize_row_groups(f, lay, x.data() + r0 * k, r0, n, g, g + 1,
                                                    parts.data()));
        }
        EXPECT_TRUE(parts == whole);
        // The padding rows 37..39 dequantize to zero and real rows come back close.
        const qe::PackedMatrix m = qe::PackedMatrix::view(f, lay, whole.data());
        const qe::KernelTable& ref = qe::select_table("ref");
        std::vector<float> row(static_cast<size_t>(k));
        double err = 0.0, norm = 0.0;
        for (int64_t r = 0; r < rows; ++r) {
            ref.dequantize_row(m, r, row.data());
            for (int64_t j = 0; j < k; ++j) {
                const double d = double(row[size_t(j)]) - double(x[size_t(r * k + j)]);
                err += d * d;
                norm += double(x[size_t(r * k + j)]) * double(x[size_t(r * k + j)]);
            }
        }
        // (mixed magnitudes in every block: one value in three is 100x smaller)
        const double limit = f == WeightFormat::kQ8g32 ? 0.02 : f == WeightFormat::kQ6k ? 0.05
                                                                                          : 0.15;
        if (!(std::sqrt(err / norm) < limit))
            std::printf("  %s: relative rmse %g\n", qe::format_name(f), std::sqrt(err / norm));
        EXPECT_TRUE(std::sqrt(err / norm) < limit);
    }
}

QE_TEST(quantize_refuses_non_finite_and_bad_rows) {
    const int64_t rows = 9, k = 64;
    for (WeightFormat f : kPacked) {
        std::vector<float> x = golden_input(rows, k);
        x[size_t(8 * k + 5)] = NAN;
        const PackedLayout lay = layout_of(f, rows, k);
        std::vector<uint8_t> out(lay.total_bytes, 0);
        EXPECT_TRUE(qe::quantize_row_groups(f, lay, x.data(), 0, rows, 0, 1, out.data()));
        EXPECT_TRUE(!qe::quantize_row_groups(f, lay, x.data(), 0, rows, 1, 2, out.data()));
        x[size_t(8 * k + 5)] = -INFINITY;
        EXPECT_TRUE(!qe::quantize_row_groups(f, lay, x.data(), 0, rows, 0, 2, out.data()));
        EXPECT_TRUE(!qe::quantize_row_groups(f, lay, x.data(), 4, 5, 0, 2, out.data()));
    }
    std::vector<uint8_t> out(layout_of(WeightFormat::kQ4k, 8, 32).total_bytes, 0);
    const std::vector<float> x = golden_input(8, 32);
    EXPECT_TRUE(!qe::quantize_row_groups(WeightFormat::kQ4k, layout_of(WeightFormat::kQ4k, 8, 32),
                                         x.data(), 0, 8, 0, 1, out.data(), "sse9"));
    EXPECT_TRUE(!qe::quantize_row_groups(WeightFormat::kF16, layout_of(WeightFormat::kQ4k, 8, 32),
                                         nullptr, 0, 0, 0, 0, nullptr));
}
