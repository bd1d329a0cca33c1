// SPDX-License-Identifier: Apache-2.0
// CPU feature detection, done once per process: cpuid + xgetbv on x86 (the OS must also save the
// wide registers), getauxval hwcaps on Linux/Android aarch64, sysctl on Apple silicon.
// The dispatcher (dispatch.h) compares these bits with what each kernel table needs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qe {

// One bit per instruction-set feature a kernel table may require.
enum CpuFeature : uint32_t {
    kFeatureNone = 0,
    // x86
    kFeatureAvx2 = 1u << 0,  // with FMA and F16C, which every AVX2 CPU we target has
    kFeatureAvxVnni = 1u << 1,
    kFeatureAvx512 = 1u << 2,  // F + BW + VL
    kFeatureAvx512Vnni = 1u << 3,
    // aarch64
    kFeatureNeon = 1u << 8,
    kFeatureNeonDotprod = 1u << 9,  // sdot/udot (ARMv8.2 DotProd)
    kFeatureNeonI8mm = 1u << 10,    // smmla/usmmla (ARMv8.6 I8MM)
    kFeatureNeonFp16 = 1u << 11,    // fp16 arithmetic (asimdhp)
};

struct CpuInfo {
    uint32_t features = 0;  // CpuFeature bits
    std::string arch;       // "x86_64", "aarch64" or "unknown"
    std::string vendor;     // cpuid vendor or MIDR implementer, when known

    bool has(uint32_t mask) const { return (features & mask) == mask; }
};

// The features of the CPU this process runs on (detected on first call, then cached).
const CpuInfo& cpu_info();

// Names of the set bits, e.g. {"avx2", "avx512_vnni"}.
std::vector<std::string> feature_names(uint32_t features);

}  // namespace qe
