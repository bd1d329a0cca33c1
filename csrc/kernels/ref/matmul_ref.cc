// SPDX-License-Identifier: Apache-2.0
// Scalar reference of the matrix products: float weights (f32/f16/bf16) with float activations,
// and the quantized families (activation quantization, the W4A8/W8A8 products, dequantization)
// following docs/weight-formats.md literally. Per block, the integer dot product is exact;
// blocks are combined in float32 in index order. Every ISA variant is tested against these
// functions, and they are the fallback where no SIMD table applies.
#include <cmath>
#include <cstring>

#include "kernels/format_dispatch.h"
#include "kernels/kernels.h"

namespace qe::ref {
namespace {

// Code of row r (0..7 within its group) at column j (0..31 within the block) of a quant record:
// the signed level for q8g32 (u8 - 128) and q6k (u6 - 32), the unsigned 4-bit code otherwise.
inline int code(WeightFormat f, const uint8_t* rec, int r, int j) {
    const int step = j / kStepK, lane = r * kStepK + j % kStepK;
    if (f == WeightFormat::kQ8g32) return int(rec[step * 32 + lane]) - 128;
    const uint8_t byte = rec[(step / 2) * 32 + lane];
    const int low = (step % 2 == 0) ? (byte & 0x0f) : (byte >> 4);
    if (f != WeightFormat::kQ6k) return low;
    const uint8_t high = rec[kQ6HighOffset + (step / 4) * 32 + lane];
    return (low | ((high >> (2 * (step % 4))) & 3) << 4) - 32;
}

inline uint16_t load_u16(const uint8_t* p) {
    uint16_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// The float factors of row r in block b: value = a * code + c (exactly the documented formula
// for all formats but q4k and q6k, whose row factors are applied after the sum over blocks).
struct BlockFactors {
    float scale, offset;
};

inline BlockFactors block_factors(WeightFormat f, const PackedMatrix& w, int64_t g, int64_t b,
                                  int r) {
    const uint8_t* s = w.scales + (g * w.blocks + b) * scale_record_bytes(f);
    switch (f) {
        case WeightFormat::kQ8g32:
        case WeightFormat::kQ4g32:
            return {f16_to_f32(load_u16(s + 2 * r)), 0.0f};
        case WeightFormat::kQ4ag32:
            return {f16_to_f32(load_u16(s + 2 * r)), f16_to_f32(load_u16(s + 16 + 2 * r))};
        case WeightFormat::kQ6k:
            return {float(int8_t(s[r])), 0.0f};  // sc (integer)
        default:
            return {float(s[r]), float(s[8 + r])};  // q4k: sc, mn (integers)
    }
}

// sum_k W[r, k] x[k] for one row (r = 8 g + rr) over all blocks; F = w.format.
template <WeightFormat F>
float row_dot(const PackedMatrix& w, const BlockQ8A* x, int64_t g, int rr) {
    const int64_t qbytes = quant_record_bytes(F);
    float acc = 0.0f, acc_min = 0.0f;
    for (int64_t b = 0; b < w.blocks; ++b) {
        const uint8_t* rec = w.quants + (g * w.blocks + b) * qbytes;
        int32_t dot = 0;
        for (int j = 0; j < kBlockK; ++j) dot += code(F, rec, rr, j) * x[b].q[j];
        const BlockFactors f = block_factors(F, w, g, b, rr);
        // Per term: the factor rounded, then one fused multiply-add. The minimum terms take the
        // block's scaled sum d * float(sum), rounded once, so kernels can share it across rows.
        const float xd = x[b].d;
        const float xs = x[b].d * float(x[b].sum);
        switch (F) {
            case WeightFormat::kQ8g32:
            case WeightFormat::kQ6k:  // q6k: integer sub-scale now, row factor at the end
                acc = std::fma(f.scale * xd, float(dot), acc);
                break;
            case WeightFormat::kQ4g32:
                acc = std::fma(f.scale * xd, float(dot - 8 * x[b].sum), acc);
                break;
            case WeightFormat::kQ4ag32:
                acc = std::fma(f.scale * xd, float(dot), acc);
                acc = std::fma(f.offset, xs, acc);
                break;
            default:  // q4k: integer sub-scales now, row factors at the end
                acc = std::fma(f.scale * xd, float(dot), acc);
                acc_min = std::fma(f.offset, xs, acc_min);
                break;
        }
    }
    if (F == WeightFormat::kQ4k) {
        const float* rp = w.row_params + g * 16;
        return rp[rr] * acc - rp[8 + rr] * acc_min;
    }
    if (F == WeightFormat::kQ6k) return w.row_params[g * 8 + rr] * acc;
    return acc;
}

template <typename Widen, typename W>
void gemm_float(const W* w, int64_t ldw, const float* x, int64_t ldx, int64_t m, float* y,
                int64_t ldy, int64_t rows, int64_t k, Widen widen) {
    for (int64_t t = 0; t < m; ++t) {
        for (int64_t r = 0; r < rows; ++r) {
            const W* wr = w + r * ldw;
            const float* xt = x + t * ldx;
            float acc = 0.0f;
            for (int64_t i = 0; i < k; ++i) acc += widen(wr[i]) * xt[i];
            y[t * ldy + r] = acc;
        }
    }
}

}  // namespace

void gemv_f32(const float* w, int64_t ldw, const float* x, float* y, int64_t rows, int64_t k) {
    gemm_float(w, ldw, x, k, 1, y, rows, rows, k, [](float v) { return v; });
}

void gemm_f32(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t m, float* y,
              int64_t ldy, int64_t rows, int64_t k) {
    gemm_float(w, ldw, x, ldx, m, y, ldy, rows, k, [](float v) { return v; });
}

void gemm_f16(const uint16_t* w, int64_t ldw, const float* x, int64_t ldx, int64_t m, float* y,
              int64_t ldy, int64_t rows, int64_t k) {
    gemm_float(w, ldw, x, ldx, m, y, ldy, rows, k, f16_to_f32);
}

void gemm_bf16(const uint16_t* w, int64_t ldw, const float* x, int64_t ldx, int64_t m, float* y,
               int64_t ldy, int64_t rows, int64_t k) {
    gemm_float(w, ldw, x, ldx, m, y, ldy, rows, k, bf16_to_f32);
}

void quantize_q8a(const float* x, BlockQ8A* out, int64_t k) {
    for (int64_t b = 0; b < k / kBlockK; ++b) {
        out[b].d = quantize_block_q8(x + b * kBlockK, out[b].q);
        int32_t sum = 0;
        for (int j = 0; j < kBlockK; ++j) sum += out[b].q[j];
        out[b].sum = sum;
    }
}

void gemv_q8a(const PackedMatrix& w, const BlockQ8A* x, float* y, int64_t g_begin, int64_t g_end) {
    with_format(w.format, [&](auto fmt) {
        for (int64_t g = g_begin; g < g_end; ++g) {
            for (int rr = 0; rr < kRowPack && g * kRowPack + rr < w.rows; ++rr) {
                y[g * kRowPack + rr] = row_dot<decltype(fmt)::value>(w, x, g, rr);
            }
        }
    });
}

void gemm_q8a(const PackedMatrix& w, const BlockQ8A* x, int64_t m, float* y, int64_t ldy,
              int64_t g_begin, int64_t g_end) {
    for (int64_t t = 0; t < m; ++t) gemv_q8a(w, x + t * w.blocks, y + t * ldy, g_begin, g_end);
}

void dequantize_row(const PackedMatrix& w, int64_t r, float* out) {
    const int64_t g = r / kRowPack;
    const int rr = int(r % kRowPack);
    with_format(w.format, [&](auto fmt) {
        constexpr WeightFormat F = decltype(fmt)::value;
        const int64_t qbytes = quant_record_bytes(F);
        for (int64_t b = 0; b < w.blocks; ++b) {
            const uint8_t* rec = w.quants + (g * w.blocks + b) * qbytes;
            const BlockFactors f = block_factors(F, w, g, b, rr);
            for (int j = 0; j < kBlockK; ++j) {
                const int q = code(F, rec, rr, j);
                float v;
                switch (F) {
                    case WeightFormat::kQ8g32:
                        v = f.scale * float(q);
                        break;
                    case WeightFormat::kQ4g32:
                        v = f.scale * float(q - 8);
                        break;
                    case WeightFormat::kQ4ag32:
                        v = f.scale * float(q) + f.offset;
                        break;
                    case WeightFormat::kQ6k:
                        v = w.row_params[g * 8 + rr] * f.scale * float(q);
                        break;
                    default: {
                        const float* rp = w.row_params + g * 16;
                        v = rp[rr] * f.scale * float(q) - rp[8 + rr] * f.offset;
                    }
                }
                out[b * kBlockK + j] = v;
            }
        }
    });
}

}  // namespace qe::ref
