// SPDX-License-Identifier: Apache-2.0
#include "dispatch.h"

#include <cstdlib>

#include "common.h"

namespace qe {
namespace {

// clang-format off
#define QE_TABLE_SLOTS(X)                                                                        \
    X(gemv_f32) X(gemm_f32) X(gemm_f16) X(gemm_bf16) X(quantize_q8a) X(gemv_q8a) X(gemm_q8a)     \
    X(dequantize_row)                                                                            \
    X(cvt_f16_f32) X(cvt_bf16_f32) X(cvt_f32_f16) X(rms_norm) X(rms_norm_gated) X(l2_norm)       \
    X(rope) X(softmax) X(silu_mul) X(sigmoid_mul)                                                \
    X(conv1d_silu) X(delta_rule)                                                                 \
    X(attention_f16) X(attention_f32) X(attention_q8) X(attention_q4)
// clang-format on

#define QE_COUNT_SLOT(name) +1
static_assert(0 QE_TABLE_SLOTS(QE_COUNT_SLOT) == kKernelSlots, "QE_TABLE_SLOTS vs kKernelSlots");
#undef QE_COUNT_SLOT
static_assert(sizeof(KernelTable) == sizeof(void*) * (kKernelSlots + 2),
              "every KernelTable field after tag/required must be listed in QE_TABLE_SLOTS");

KernelTable make_ref() {
    KernelTable t{};
    t.tag = "ref";
    t.required = kFeatureNone;
#define QE_SET_REF(name) t.name = ref::name;
    QE_TABLE_SLOTS(QE_SET_REF)
#undef QE_SET_REF
    return t;
}

// Each SIMD table starts as a copy of the next-best table and overrides what it specializes,
// so a family it does not specialize points at the next-best implementation (no null slots).
#if defined(__x86_64__) || defined(_M_X64)
KernelTable make_avx2() {
    KernelTable t = make_ref();
    t.tag = "avx2";
    t.required = kFeatureAvx2;
#define QE_SET_AVX2(name) t.name = avx2::name;
    QE_TABLE_SLOTS(QE_SET_AVX2)
#undef QE_SET_AVX2
    return t;
}

// AVX-VNNI (256-bit vpdpbusd, vpdpwssd): the integer products and attention (the int8
// cache's sums); everything else as avx2.
KernelTable make_avx_vnni() {
    KernelTable t = make_avx2();
    t.tag = "avx_vnni";
    t.required = kFeatureAvx2 | kFeatureAvxVnni;
    t.gemv_q8a = avx_vnni::gemv_q8a;
    t.gemm_q8a = avx_vnni::gemm_q8a;
    t.attention_f16 = avx_vnni::attention_f16;
    t.attention_f32 = avx_vnni::attention_f32;
    t.attention_q8 = avx_vnni::attention_q8;
    t.attention_q4 = avx_vnni::attention_q4;
    return t;
}

// AVX-512 VNNI (two row groups per 512-bit vpdpbusd): the integer products, the 16-lane
// delta rule and attention. Based on avx2, not avx_vnni: Ice Lake and Cascade Lake have AVX-512
// VNNI but no AVX-VNNI.
KernelTable make_avx512_vnni() {
    KernelTable t = make_avx2();
    t.tag = "avx512_vnni";
    t.required = kFeatureAvx2 | kFeatureAvx512 | kFeatureAvx512Vnni;
    t.gemv_q8a = avx512_vnni::gemv_q8a;
    t.gemm_q8a = avx512_vnni::gemm_q8a;
    t.delta_rule = avx512_vnni::delta_rule;
    t.attention_f16 = avx512_vnni::attention_f16;
    t.attention_f32 = avx512_vnni::attention_f32;
    t.attention_q8 = avx512_vnni::attention_q8;
    t.attention_q4 = avx512_vnni::attention_q4;
    return t;
}
#endif

#if defined(__aarch64__)
// Best first: usmmla prefill, sdot, baseline NEON. The i8mm file is compiled with +dotprod too
// and that table decodes with the sdot kernel, so it requires both features.
KernelTable make_neon() {
    KernelTable t = make_ref();
    t.tag = "neon";
    t.required = kFeatureNeon;
#define QE_SET_NEON(name) t.name = neon::name;
    QE_TABLE_SLOTS(QE_SET_NEON)
#undef QE_SET_NEON
    return t;
}

KernelTable make_neon_dotprod() {
    KernelTable t = make_neon();
    t.tag = "neon_dotprod";
    t.required = kFeatureNeon | kFeatureNeonDotprod;
    t.gemv_q8a = neon_dotprod::gemv_q8a;
    t.gemm_q8a = neon_dotprod::gemm_q8a;
    t.attention_q4 = neon_dotprod::attention_q4;
    return t;
}

KernelTable make_neon_i8mm() {
    KernelTable t = make_neon_dotprod();
    t.tag = "neon_i8mm";
    t.required = kFeatureNeon | kFeatureNeonDotprod | kFeatureNeonI8mm;
    t.gemm_q8a = neon_i8mm::gemm_q8a;
    return t;
}
#endif

}  // namespace

const void* kernel_slot(const KernelTable& t, int i) {
    int n = 0;
#define QE_SLOT_PTR(name) \
    if (n++ == i) return reinterpret_cast<const void*>(t.name);
    QE_TABLE_SLOTS(QE_SLOT_PTR)
#undef QE_SLOT_PTR
    return nullptr;
}

const char* kernel_slot_name(int i) {
    int n = 0;
#define QE_SLOT_NAME(name) \
    if (n++ == i) return #name;
    QE_TABLE_SLOTS(QE_SLOT_NAME)
#undef QE_SLOT_NAME
    return "?";
}

const std::vector<const KernelTable*>& compiled_tables() {
    // Best first: the first table whose features the CPU has wins.
#if defined(__x86_64__) || defined(_M_X64)
    static const KernelTable avx512_vnni = make_avx512_vnni();
    static const KernelTable avx_vnni = make_avx_vnni();
    static const KernelTable avx2 = make_avx2();
#endif
#if defined(__aarch64__)
    static const KernelTable neon_i8mm = make_neon_i8mm();
    static const KernelTable neon_dotprod = make_neon_dotprod();
    static const KernelTable neon = make_neon();
#endif
    static const KernelTable ref = make_ref();
    static const std::vector<const KernelTable*> tables = {
#if defined(__x86_64__) || defined(_M_X64)
        &avx512_vnni, &avx_vnni,     &avx2,
#endif
#if defined(__aarch64__)
        &neon_i8mm,   &neon_dotprod, &neon,
#endif
        &ref,
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
                     "' needs CPU features this machine lacks; supported here: ", [&] {
                         std::string s;
                         for (const KernelTable* u : supported_tables(cpu))
                             s += (s.empty() ? "" : ", ") + std::string(u->tag);
                         return s;
                     }());
            return *t;
        }
        known += (known.empty() ? "" : ", ") + std::string(t->tag);
    }
    QE_CHECK(false, "unknown kernel table '", want,
             "' (QWEN_EDGE_ISA or isa=); built with: ", known);
    return *compiled_tables().back();  // unreachable
}

}  // namespace qe
