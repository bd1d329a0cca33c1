// SPDX-License-Identifier: Apache-2.0
#include "cpu_features.h"

#include <utility>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace qe {
namespace {

#if defined(__x86_64__) || defined(_M_X64)
uint64_t read_xcr0() {
    uint32_t lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t(hi) << 32) | lo;
}

CpuInfo detect() {
    CpuInfo info;
    info.arch = "x86_64";
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return info;
    const unsigned max_leaf = a;
    char vendor[13] = {};
    reinterpret_cast<unsigned*>(vendor)[0] = b;
    reinterpret_cast<unsigned*>(vendor)[1] = d;
    reinterpret_cast<unsigned*>(vendor)[2] = c;
    info.vendor = vendor;

    __get_cpuid(1, &a, &b, &c, &d);
    const bool fma = c & (1u << 12), osxsave = c & (1u << 27), f16c = c & (1u << 29);
    if (!osxsave || max_leaf < 7) return info;
    // The OS must save the registers too: XCR0 bits 1-2 (SSE/AVX state), 5-7 (AVX-512 state).
    const uint64_t xcr0 = read_xcr0();
    const bool os_avx = (xcr0 & 0x6) == 0x6;
    const bool os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;

    __get_cpuid_count(7, 0, &a, &b, &c, &d);
    const bool avx2 = b & (1u << 5);
    const bool avx512f = b & (1u << 16), avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
    const bool avx512vnni = c & (1u << 11);
    __get_cpuid_count(7, 1, &a, &b, &c, &d);
    const bool avxvnni = a & (1u << 4);

    if (os_avx && avx2 && fma && f16c) {
        info.features |= kFeatureAvx2;
        if (avxvnni) info.features |= kFeatureAvxVnni;
        if (os_avx512 && avx512f && avx512bw && avx512vl) {
            info.features |= kFeatureAvx512;
            if (avx512vnni) info.features |= kFeatureAvx512Vnni;
        }
    }
    return info;
}

#elif defined(__aarch64__)
CpuInfo detect() {
    CpuInfo info;
    info.arch = "aarch64";
    info.features |= kFeatureNeon;  // Advanced SIMD is mandatory in ARMv8-A
#if defined(__linux__)
    // Bit numbers from the kernel's uapi asm/hwcap.h (not all libcs define the names).
    const unsigned long hwcap = getauxval(AT_HWCAP);
    const unsigned long hwcap2 = getauxval(AT_HWCAP2);
    if (hwcap & (1ul << 20)) info.features |= kFeatureNeonDotprod;  // HWCAP_ASIMDDP
    if (hwcap & (1ul << 10)) info.features |= kFeatureNeonFp16;     // HWCAP_ASIMDHP
    if (hwcap2 & (1ul << 13)) info.features |= kFeatureNeonI8mm;    // HWCAP2_I8MM
#elif defined(__APPLE__)
    auto sysctl_flag = [](const char* name) {
        int value = 0;
        size_t size = sizeof(value);
        return sysctlbyname(name, &value, &size, nullptr, 0) == 0 && value != 0;
    };
    if (sysctl_flag("hw.optional.arm.FEAT_DotProd")) info.features |= kFeatureNeonDotprod;
    if (sysctl_flag("hw.optional.arm.FEAT_FP16")) info.features |= kFeatureNeonFp16;
    if (sysctl_flag("hw.optional.arm.FEAT_I8MM")) info.features |= kFeatureNeonI8mm;
#endif
    return info;
}

#else
CpuInfo detect() {
    CpuInfo info;
    info.arch = "unknown";
    return info;
}
#endif

}  // namespace

const CpuInfo& cpu_info() {
    static const CpuInfo info = detect();
    return info;
}

std::vector<std::string> feature_names(uint32_t features) {
    static const std::pair<uint32_t, const char*> kNames[] = {
        {kFeatureAvx2, "avx2"},
        {kFeatureAvxVnni, "avx_vnni"},
        {kFeatureAvx512, "avx512"},
        {kFeatureAvx512Vnni, "avx512_vnni"},
        {kFeatureNeon, "neon"},
        {kFeatureNeonDotprod, "dotprod"},
        {kFeatureNeonI8mm, "i8mm"},
        {kFeatureNeonFp16, "fp16"},
    };
    std::vector<std::string> names;
    for (const auto& [bit, name] : kNames) {
        if (features & bit) names.emplace_back(name);
    }
    return names;
}

}  // namespace qe
