// SPDX-License-Identifier: Apache-2.0
#include "dispatch.h"

#include <cstdlib>

#include "common.h"

namespace qe {
namespace {

// Slots a table does not specialize point at the next-best implementation (no null slots).
const KernelTable kRefTable = {"ref",           kFeatureNone,     ref::gemv_f32,
                               ref::quantize_q8a, ref::gemv_q8a,  ref::gemm_q8a,
                               ref::dequantize_row};
#if defined(__x86_64__) || defined(_M_X64)
const KernelTable kAvx2Table = {"avx2",           kFeatureAvx2,    avx2::gemv_f32,
                                ref::quantize_q8a, ref::gemv_q8a,  ref::gemm_q8a,
                                ref::dequantize_row};
#endif
#if defined(__aarch64__)
// Best first: usmmla prefill, sdot, baseline NEON. The i8mm file is compiled with +dotprod too
// and that table decodes with the sdot kernel, so it requires both features.
const KernelTable kNeonI8mmTable = {
    "neon_i8mm",            kFeatureNeon | kFeatureNeonDotprod | kFeatureNeonI8mm,
    neon::gemv_f32,         neon::quantize_q8a,
    neon_dotprod::gemv_q8a, neon_i8mm::gemm_q8a,
    neon::dequantize_row};
const KernelTable kNeonDotprodTable = {
    "neon_dotprod",         kFeatureNeon | kFeatureNeonDotprod,
    neon::gemv_f32,         neon::quantize_q8a,
    neon_dotprod::gemv_q8a, neon_dotprod::gemm_q8a,
    neon::dequantize_row};
const KernelTable kNeonTable = {"neon",           kFeatureNeon,   neon::gemv_f32,
                                neon::quantize_q8a, neon::gemv_q8a, neon::gemm_q8a,
                                neon::dequantize_row};
#endif

}  // namespace

const std::vector<const KernelTable*>& compiled_tables() {
    static const std::vector<const KernelTable*> tables = {
#if defined(__x86_64__) || defined(_M_X64)
        &kAvx2Table,
#endif
#if defined(__aarch64__)
        &kNeonI8mmTable,
        &kNeonDotprodTable,
        &kNeonTable,
#endif
        &kRefTable,
    };
    return tables;
}

std::vector<const KernelTable*> supported_tables(const CpuInfo& cpu) {
    std::vector<const KernelTable*> out;
    for (const KernelTable* t : compiled_tables()) {
        if (cpu.has(t->required)) out.push_back(t);
    }
    return out;
}

const KernelTable& select_table(const std::string& forced, const CpuInfo& cpu) {
    std::string want = forced;
    if (want.empty()) {
        const char* env = std::getenv("QWEN_EDGE_ISA");
        if (env != nullptr) want = env;
    }
    if (want.empty()) return *supported_tables(cpu).front();

    std::string known;
    for (const KernelTable* t : compiled_tables()) {
        if (want == t->tag) {
            QE_CHECK(cpu.has(t->required), "kernel table '", want,
                     "' needs CPU features this machine lacks; supported here: ",
                     [&] {
                         std::string s;
                         for (const KernelTable* u : supported_tables(cpu))
                             s += (s.empty() ? "" : ", ") + std::string(u->tag);
                         return s;
                     }());
            return *t;
        }
        known += (known.empty() ? "" : ", ") + std::string(t->tag);
    }
    QE_CHECK(false, "unknown kernel table '", want, "' (QWEN_EDGE_ISA or isa=); built with: ",
             known);
    return *compiled_tables().back();  // unreachable
}

}  // namespace qe
