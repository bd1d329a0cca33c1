// SPDX-License-Identifier: Apache-2.0
// The queries of an attention call against an integer cache, in codes as kernels.h defines
// them: int16 with one scale per row against the int8 cache (quantize_row_q16), int8 blocks
// with their scales and sums against the 4-bit cache (quantize_query_q4); a slot per row of a
// block, kept by the thread from call to call. Included inside a table's namespace by its
// attention code; Row is that table's row, with qc and qs, or qb, qd and qsum.

template <typename K>
struct QueryCodes {
    static constexpr bool kBytes = std::is_same_v<K, KeyGroupQ4>;
    std::vector<int16_t> codes;  // the int8 cache's
    std::vector<int8_t> bytes;   // the 4-bit cache's, with their block scales and sums
    std::vector<float> scales;
    std::vector<int32_t> sums;

    // Room for `slots` rows of d elements.
    void reserve(int64_t slots, int64_t d) {
        const auto n = size_t(slots * d);
        if constexpr (kBytes) {
            if (bytes.size() < n) {
                bytes.resize(n);
                scales.resize(n / kBlockK);
                sums.resize(n / kBlockK);
            }
        } else {
            if (codes.size() < n) codes.resize(n);
        }
    }
    // row's query into slot `slot`, and row pointed at its codes.
    template <typename Row>
    void quantize(Row& row, int64_t slot, int64_t d) {
        if constexpr (kBytes) {
            const int64_t nb = d / kBlockK;
            row.qb = bytes.data() + slot * d;
            row.qd = scales.data() + slot * nb;
            row.qsum = sums.data() + slot * nb;
            quantize_query_q4(row.q, d, bytes.data() + slot * d, scales.data() + slot * nb,
                              sums.data() + slot * nb);
        } else {
            row.qc = codes.data() + slot * d;
            row.qs = quantize_row_q16(row.q, codes.data() + slot * d, d);
        }
    }
};
