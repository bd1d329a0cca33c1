// SPDX-License-Identifier: Apache-2.0
// Kernel tables: one per ISA variant compiled into this binary, each a complete set of kernel
// function pointers plus the CPU features it needs. Chosen once at load (best table the CPU
// satisfies, or the one forced by tag / QWEN_EDGE_ISA) and stored by the caller, so a test can
// hold several tables in one process.
#pragma once

#include <string>
#include <vector>

#include "cpu_features.h"
#include "kernels/kernels.h"

namespace qe {

struct KernelTable {
    const char* tag;    // ISA tag: "ref", "avx2", "neon", "neon_dotprod", ...
    uint32_t required;  // CpuFeature bits the CPU must have
    GemvF32Fn gemv_f32;
    QuantizeQ8aFn quantize_q8a;
    GemvQ8aFn gemv_q8a;
    GemmQ8aFn gemm_q8a;
    DequantizeRowFn dequantize_row;
};

// Every table compiled into this binary, best first; the last is `ref`, which needs nothing.
const std::vector<const KernelTable*>& compiled_tables();

// Tables this CPU can run, best first.
std::vector<const KernelTable*> supported_tables(const CpuInfo& cpu = cpu_info());

// The table to use: `forced` if non-empty (error if unknown or unsupported), else the
// QWEN_EDGE_ISA environment variable if set, else the best supported table.
const KernelTable& select_table(const std::string& forced = "", const CpuInfo& cpu = cpu_info());

}  // namespace qe
