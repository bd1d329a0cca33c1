// SPDX-License-Identifier: Apache-2.0
// Dispatch and kernel tables: every table this CPU supports is complete and agrees with `ref`.
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "common.h"
#include "dispatch.h"

QE_TEST(dispatch_reports_tables) {
    const auto& cpu = qe::cpu_info();
    std::string features;
    for (const auto& f : qe::feature_names(cpu.features)) features += f + " ";
    std::printf("  cpu: %s %s [%s]\n", cpu.arch.c_str(), cpu.vendor.c_str(), features.c_str());
    const auto& compiled = qe::compiled_tables();
    EXPECT_TRUE(!compiled.empty());
    for (const auto* t : compiled) std::printf("  compiled table: %s\n", t->tag);
    EXPECT_TRUE(std::string(compiled.back()->tag) == "ref");
    for (const auto* t : qe::supported_tables()) {
        std::printf("  supported table: %s\n", t->tag);
        EXPECT_TRUE(t->gemv_f32 && t->quantize_q8a && t->gemv_q8a && t->gemm_q8a &&
                    t->dequantize_row);
    }
    // With nothing forced, the best supported table wins.
    EXPECT_TRUE(std::string(qe::select_table("", cpu).tag) == qe::supported_tables().front()->tag ||
                std::getenv("QWEN_EDGE_ISA") != nullptr);
}

QE_TEST(dispatch_rejects_unknown_and_unsupported) {
    bool threw = false;
    try {
        qe::select_table("no_such_isa");
    } catch (const qe::Error&) {
        threw = true;
    }
    EXPECT_TRUE(threw);
    qe::CpuInfo bare;  // a CPU with no features can only run ref
    EXPECT_TRUE(std::string(qe::select_table("ref", bare).tag) == "ref");
    for (const auto* t : qe::compiled_tables()) {
        if (t->required == 0) continue;
        threw = false;
        try {
            qe::select_table(t->tag, bare);
        } catch (const qe::Error&) {
            threw = true;
        }
        EXPECT_TRUE(threw);
    }
}

QE_TEST(gemv_f32_matches_ref) {
    std::mt19937 rng(1234);
    std::normal_distribution<float> normal;
    const auto& ref = qe::select_table("ref");
    for (const int64_t k : {1, 7, 8, 15, 16, 17, 31, 64, 257, 1024}) {
        for (const int64_t rows : {1, 3, 8}) {
            const int64_t ldw = k + 3;  // a row stride wider than k
            std::vector<float> w(rows * ldw), x(k), y_ref(rows), y(rows);
            for (auto& v : w) v = normal(rng);
            for (auto& v : x) v = normal(rng);
            ref.gemv_f32(w.data(), ldw, x.data(), y_ref.data(), rows, k);
            for (const auto* t : qe::supported_tables()) {
                t->gemv_f32(w.data(), ldw, x.data(), y.data(), rows, k);
                for (int64_t r = 0; r < rows; ++r) {
                    // Reordered float sums: bound by k * eps * sum |w x|, here ~ sqrt(k) scale.
                    EXPECT_NEAR(y[r], y_ref[r], 1e-5 * k, 1e-5);
                }
            }
        }
    }
}
