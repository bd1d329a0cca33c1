// SPDX-License-Identifier: Apache-2.0
// Runs one kernel of one table `reps` times on random data, for counting executed instructions
// under qemu (tools/arm_insn_count.sh runs it twice with different reps and takes the
// difference, so setup cancels out). Not a timing benchmark: no clocks here.
//   qe_kernel_runner <isa> <gemv|gemm|gemv_loop|quantize|dequantize> <format> <rows> <k> <m> <reps>
// gemv_loop = m separate gemv calls: the "no token tile" design that gemm must beat.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "dispatch.h"

int main(int argc, char** argv) {
    if (argc != 8) {
        std::fprintf(stderr, "usage: %s isa family format rows k m reps\n", argv[0]);
        return 2;
    }
    const qe::KernelTable& t = qe::select_table(argv[1]);
    const std::string family = argv[2];
    qe::WeightFormat f;
    if (!qe::parse_format(argv[3], &f) || !qe::is_quantized(f)) return 2;
    const int64_t rows = std::atoll(argv[4]), k = std::atoll(argv[5]), m = std::atoll(argv[6]);
    const int reps = std::atoi(argv[7]);
    qe::PackedLayout layout;
    if (!qe::packed_layout(f, rows, k, &layout)) return 2;

    std::mt19937 rng(1);
    std::vector<uint8_t> bytes(layout.total_bytes);
    for (auto& b : bytes) b = uint8_t(rng());
    for (uint64_t i = layout.scales_offset; i + 1 < layout.total_bytes; i += 2) {
        const uint16_t h = uint16_t(0x1c00 | (rng() & 0x83ff));  // finite, ~1e-2
        std::memcpy(&bytes[i], &h, 2);
    }
    const qe::PackedMatrix w = qe::PackedMatrix::view(f, layout, bytes.data());
    std::normal_distribution<float> normal;
    std::vector<float> x(m * k), y(m * layout.rows_padded);
    for (auto& v : x) v = normal(rng);
    std::vector<qe::BlockQ8A> xq(m * layout.blocks);
    for (int64_t i = 0; i < m; ++i)
        t.quantize_q8a(x.data() + i * k, xq.data() + i * layout.blocks, k);

    for (int r = 0; r < reps; ++r) {
        if (family == "gemv") {
            t.gemv_q8a(w, xq.data(), y.data(), 0, w.groups);
        } else if (family == "gemm") {
            t.gemm_q8a(w, xq.data(), m, y.data(), layout.rows_padded, 0, w.groups);
        } else if (family == "gemv_loop") {
            for (int64_t i = 0; i < m; ++i)
                t.gemv_q8a(w, xq.data() + i * layout.blocks, y.data() + i * layout.rows_padded, 0,
                           w.groups);
        } else if (family == "quantize") {
            for (int64_t i = 0; i < m; ++i)
                t.quantize_q8a(x.data() + i * k, xq.data() + i * layout.blocks, k);
        } else if (family == "dequantize") {
            for (int64_t i = 0; i < rows; ++i) t.dequantize_row(w, i, y.data());
        } else {
            return 2;
        }
    }
    double sum = 0;
    for (const float v : y) sum += v;
    std::printf("%s %s %s checksum %.6g\n", t.tag, family.c_str(), argv[3], sum);
    return 0;
}
