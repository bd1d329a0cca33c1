// SPDX-License-Identifier: Apache-2.0
// AVX-VNNI (VEX vpdpbusd on 256-bit vectors) W4A8/W8A8 products, for CPUs with AVX-VNNI
// (Alder Lake and later cores, Sapphire Rapids). One vpdpbusd does a step's 4 products per row
// and accumulates them in int32, replacing pmaddubsw + pmaddwd + add of the avx2 variant
// (matmul_vnni_ymm_inl.h). Compiled with -mavx2 -mfma -mf16c -mavxvnni (per file).
#include <immintrin.h>

#include <cstring>

#include "kernels/format_dispatch.h"
#include "kernels/kernels.h"

namespace qe::avx_vnni {
namespace {

static inline __m256i dpbusd(__m256i acc, __m256i w, __m256i x) {
    return _mm256_dpbusd_avx_epi32(acc, w, x);
}

#include "kernels/x86/matmul_vnni_ymm_inl.h"

}  // namespace

#include "kernels/x86/matmul_q8a_ymm_inl.h"

}  // namespace qe::avx_vnni
