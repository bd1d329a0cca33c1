// SPDX-License-Identifier: Apache-2.0
// The four attention entry points of a table (kernels.h: attention_f16, attention_f32,
// attention_q8, attention_q4), one per cache element type, over the table's own
//   template <typename K, typename V> void attention(q, ldq, ldqt, n_q, n_t, k, v, n, d,
//                                                    scale, scratch, out, ldo, ldot);
// which must be declared (with internal linkage) before this header is included inside the
// table's namespace. The cache's types pick the loads; everything else is the template's.

void attention_f16(const float* q, int64_t ldq, int64_t ldqt, int64_t n_q, int64_t n_t,
                   const uint16_t* k, const uint16_t* v, int64_t n, int64_t d, float scale,
                   float* scratch, float* out, int64_t ldo, int64_t ldot) {
    attention(q, ldq, ldqt, n_q, n_t, k, v, n, d, scale, scratch, out, ldo, ldot);
}

void attention_f32(const float* q, int64_t ldq, int64_t ldqt, int64_t n_q, int64_t n_t,
                   const float* k, const float* v, int64_t n, int64_t d, float scale,
                   float* scratch, float* out, int64_t ldo, int64_t ldot) {
    attention(q, ldq, ldqt, n_q, n_t, k, v, n, d, scale, scratch, out, ldo, ldot);
}

void attention_q8(const float* q, int64_t ldq, int64_t ldqt, int64_t n_q, int64_t n_t,
                  const KeyGroupQ8* k, const ValueGroupQ8* v, int64_t n, int64_t d, float scale,
                  float* scratch, float* out, int64_t ldo, int64_t ldot) {
    attention(q, ldq, ldqt, n_q, n_t, k, v, n, d, scale, scratch, out, ldo, ldot);
}

void attention_q4(const float* q, int64_t ldq, int64_t ldqt, int64_t n_q, int64_t n_t,
                  const KeyGroupQ4* k, const ValueGroupQ4* v, int64_t n, int64_t d, float scale,
                  float* scratch, float* out, int64_t ldo, int64_t ldot) {
    attention(q, ldq, ldqt, n_q, n_t, k, v, n, d, scale, scratch, out, ldo, ldot);
}
