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

// Slots by family in the order of kernels/kernels.h; every slot of every table is set (a test
// checks).
struct KernelTable {
    const char* tag;    // ISA tag: "ref", "avx2", "avx_vnni", "avx512_vnni", "neon", ...
    uint32_t required;  // CpuFeature bits the CPU must have
    // matmul
    GemvF32Fn* gemv_f32;
    GemmF32Fn* gemm_f32;
    GemmHalfFn* gemm_f16;
    GemmHalfFn* gemm_bf16;
    QuantizeQ8aFn* quantize_q8a;
    GemvQ8aFn* gemv_q8a;
    GemmQ8aFn* gemm_q8a;
    DequantizeRowFn* dequantize_row;
    // vec
    CvtHalfToF32Fn* cvt_f16_f32;
    CvtHalfToF32Fn* cvt_bf16_f32;
    CvtF32ToF16Fn* cvt_f32_f16;
    RmsNormFn* rms_norm;
    RmsNormGatedFn* rms_norm_gated;
    L2NormFn* l2_norm;
    RopeFn* rope;
    SoftmaxFn* softmax;
    SiluMulFn* silu_mul;
    SigmoidMulFn* sigmoid_mul;
    // delta
    Conv1dSiluFn* conv1d_silu;
    DeltaRuleFn* delta_rule;
    // attention
    AttentionF16Fn* attention_f16;
    AttentionF32Fn* attention_f32;
    AttentionQ8Fn* attention_q8;
    AttentionQ4Fn* attention_q4;
};

// Number of function slots in a KernelTable and a view of them (for the completeness test).
constexpr int kKernelSlots = 24;
// Slot i of a table as an untyped pointer (nullptr if unset) and its kernel name.
const void* kernel_slot(const KernelTable& t, int i);
const char* kernel_slot_name(int i);

// Every table compiled into this binary, best first; the last is `ref`, which needs nothing.
const std::vector<const KernelTable*>& compiled_tables();

// Tables this CPU can run, best first.
std::vector<const KernelTable*> supported_tables(const CpuInfo& cpu = cpu_info());

// The table to use: `forced` if non-empty (error if unknown or unsupported), else the
// QWEN_EDGE_ISA environment variable if set, else the best supported table.
const KernelTable& select_table(const std::string& forced = "", const CpuInfo& cpu = cpu_info());

}  // namespace qe
