// SPDX-License-Identifier: Apache-2.0
// The kernel test surface of _core: each family of kernels/kernels.h callable on numpy arrays
// with an explicit kernel table (`isa`), so Python tests compare every table the CPU supports
// against `ref` and numpy. Shapes are checked here, because kernels trust their callers.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <array>
#include <cstring>
#include <vector>

#include "bindings/bindings.h"
#include "common.h"
#include "dispatch.h"

namespace py = pybind11;

namespace qe_py {
namespace {

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using U16 = py::array_t<uint16_t, py::array::c_style | py::array::forcecast>;

const qe::KernelTable& table(const std::string& isa) {
    return qe::select_table(isa);
}

py::array_t<float> empty_like_shape(const std::vector<py::ssize_t>& shape) {
    return py::array_t<float>(shape);
}

// The attention kernels' scratch, exactly the contract's size, followed by a guard band whose
// bit pattern check() verifies: a kernel writing past attention_scratch() is a test failure.
class ScratchGuard {
public:
    explicit ScratchGuard(int64_t n) : n_(size_t(n)), buf_(size_t(n) + kGuard, kCanary) {}
    float* data() { return buf_.data(); }
    void check() const {
        for (size_t i = n_; i < buf_.size(); ++i) {
            QE_CHECK(std::memcmp(&buf_[i], &kCanary, sizeof(float)) == 0,
                     "attention: the kernel wrote past its ", n_, " floats of scratch");
        }
    }

private:
    static constexpr size_t kGuard = 64;
    static constexpr float kCanary = -1234.5f;
    size_t n_;
    std::vector<float> buf_;
};

std::vector<py::ssize_t> shape_of(const py::array& a) {
    return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

// (n_t, n_q, d, n) of an attention call: q [n_q, d] (n_t = 1) or [n_t, n_q, d]; k, v [n, d]
// with n >= n_t.
std::array<int64_t, 4> attention_shape(const F32& q, const py::array& k, const py::array& v,
                                       const char* name) {
    const bool tokens = q.ndim() == 3;
    QE_CHECK((q.ndim() == 2 || tokens) && k.ndim() == 2 && v.ndim() == 2 &&
                 k.shape(1) == q.shape(q.ndim() - 1) && v.shape(1) == k.shape(1) &&
                 k.shape(0) == v.shape(0) && k.shape(0) >= (tokens ? q.shape(0) : 1) &&
                 q.shape(q.ndim() - 2) >= 1 && (!tokens || q.shape(0) >= 1),
             name, ": expected q [n_q, d] or [n_t, n_q, d], k and v [n, d], n >= max(n_t, 1)");
    return {tokens ? q.shape(0) : 1, q.shape(q.ndim() - 2), q.shape(q.ndim() - 1), k.shape(0)};
}

// y [m, rows] = x [m, k] @ w [rows, k].T for float weights.
template <typename W, typename Fn>
py::array_t<float> gemm(const py::array_t<W, py::array::c_style | py::array::forcecast>& w,
                        const F32& x, Fn fn) {
    QE_CHECK(w.ndim() == 2 && x.ndim() == 2 && w.shape(1) == x.shape(1),
             "gemm: expected w [rows, k] and x [m, k]");
    const int64_t rows = w.shape(0), k = w.shape(1), m = x.shape(0);
    py::array_t<float> y({m, rows});
    {
        py::gil_scoped_release release;
        fn(w.data(), k, x.data(), k, m, y.mutable_data(), rows, rows, k);
    }
    return y;
}

// attention_q8 / attention_q4 on float k, v [n, d], quantized first as the model's cache
// stores them, in groups of 16 positions.
template <typename KG, typename VG, typename Fn>
py::array_t<float> attention_groups(const F32& q, const F32& k, const F32& v, float scale,
                                    void (*quantize_keys)(const float*, KG*, int64_t, int64_t),
                                    void (*quantize_values)(const float*, VG*, int64_t, int64_t),
                                    Fn* attention, const char* name) {
    const auto [n_t, n_q, d, n] = attention_shape(q, k, v, name);
    QE_CHECK(d % qe::kBlockK == 0, name, ": expected d % 32 == 0, got d = ", d);
    std::vector<KG> kq(size_t(qe::kv_groups(n, d)));
    std::vector<VG> vq(kq.size());
    quantize_keys(k.data(), kq.data(), n, d);
    quantize_values(v.data(), vq.data(), n, d);
    py::array_t<float> out(shape_of(q));
    ScratchGuard scratch(qe::attention_scratch(n_t * n_q, n));
    attention(q.data(), d, n_q * d, n_q, n_t, kq.data(), vq.data(), n, d, scale, scratch.data(),
              out.mutable_data(), d, n_q * d);
    scratch.check();
    return out;
}

}  // namespace

void bind_kernels(py::module_& m) {
    m.attr("ATTENTION_TILE") = qe::kAttentionTile;
    m.def(
        "attention_scratch", [](int64_t n_q, int64_t n) { return qe::attention_scratch(n_q, n); },
        py::arg("n_q"), py::arg("n"),
        "Floats of scratch an attention kernel call needs: n_q * min(n, ATTENTION_TILE).");
    m.def(
        "gemm_f32",
        [](const F32& w, const F32& x, const std::string& isa) {
            return gemm<float>(w, x, table(isa).gemm_f32);
        },
        py::arg("w"), py::arg("x"), py::arg("isa") = "", "x [m, k] @ w.T, w float32 [rows, k].");
    m.def(
        "gemm_f16",
        [](const U16& w, const F32& x, const std::string& isa) {
            return gemm<uint16_t>(w, x, table(isa).gemm_f16);
        },
        py::arg("w"), py::arg("x"), py::arg("isa") = "",
        "x [m, k] @ w.T, w IEEE half bits (uint16) [rows, k].");
    m.def(
        "gemm_bf16",
        [](const U16& w, const F32& x, const std::string& isa) {
            return gemm<uint16_t>(w, x, table(isa).gemm_bf16);
        },
        py::arg("w"), py::arg("x"), py::arg("isa") = "",
        "x [m, k] @ w.T, w bfloat16 bits (uint16) [rows, k].");

    m.def(
        "cvt_f16_f32",
        [](const U16& in, const std::string& isa) {
            py::array_t<float> out(shape_of(in));
            table(isa).cvt_f16_f32(in.data(), out.mutable_data(), in.size());
            return out;
        },
        py::arg("x"), py::arg("isa") = "", "IEEE half bits -> float32.");
    m.def(
        "cvt_bf16_f32",
        [](const U16& in, const std::string& isa) {
            py::array_t<float> out(shape_of(in));
            table(isa).cvt_bf16_f32(in.data(), out.mutable_data(), in.size());
            return out;
        },
        py::arg("x"), py::arg("isa") = "", "bfloat16 bits -> float32.");
    m.def(
        "cvt_f32_f16",
        [](const F32& in, const std::string& isa) {
            py::array_t<uint16_t> out(shape_of(in));
            table(isa).cvt_f32_f16(in.data(), out.mutable_data(), in.size());
            return out;
        },
        py::arg("x"), py::arg("isa") = "", "float32 -> IEEE half bits (round to nearest even).");

    m.def(
        "rms_norm",
        [](const F32& x, const F32& w, float eps, const std::string& isa) {
            QE_CHECK(x.ndim() == 2 && w.ndim() == 1 && w.shape(0) == x.shape(1),
                     "rms_norm: expected x [rows, n], w [n]");
            auto y = empty_like_shape(shape_of(x));
            table(isa).rms_norm(x.data(), w.data(), y.mutable_data(), x.shape(0), x.shape(1), eps);
            return y;
        },
        py::arg("x"), py::arg("w"), py::arg("eps"), py::arg("isa") = "",
        "Row-wise x / sqrt(mean(x^2) + eps) * w.");
    m.def(
        "rms_norm_gated",
        [](const F32& x, const F32& w, const F32& z, float eps, const std::string& isa) {
            QE_CHECK(x.ndim() == 2 && w.ndim() == 1 && w.shape(0) == x.shape(1) &&
                         shape_of(z) == shape_of(x),
                     "rms_norm_gated: expected x [rows, n], w [n], z [rows, n]");
            auto y = empty_like_shape(shape_of(x));
            table(isa).rms_norm_gated(x.data(), w.data(), z.data(), y.mutable_data(), x.shape(0),
                                      x.shape(1), eps);
            return y;
        },
        py::arg("x"), py::arg("w"), py::arg("z"), py::arg("eps"), py::arg("isa") = "",
        "w * rmsnorm(x) * silu(z), row-wise.");
    m.def(
        "l2_norm",
        [](const F32& x, float eps, float scale, const std::string& isa) {
            QE_CHECK(x.ndim() == 2, "l2_norm: expected x [rows, n]");
            auto y = empty_like_shape(shape_of(x));
            table(isa).l2_norm(x.data(), y.mutable_data(), x.shape(0), x.shape(1), x.shape(1), eps,
                               scale);
            return y;
        },
        py::arg("x"), py::arg("eps"), py::arg("scale"), py::arg("isa") = "",
        "Row-wise x / sqrt(sum(x^2) + eps) * scale.");
    m.def(
        "rope",
        [](const F32& x, const F32& cos, const F32& sin, const std::string& isa) {
            QE_CHECK(x.ndim() == 2 && cos.ndim() == 1 && sin.size() == cos.size() &&
                         2 * cos.size() <= x.shape(1),
                     "rope: expected x [n_heads, d], cos and sin [half], 2 * half <= d");
            py::array_t<float> y(shape_of(x));
            std::copy_n(x.data(), x.size(), y.mutable_data());
            table(isa).rope(y.mutable_data(), x.shape(0), x.shape(1), cos.data(), sin.data(),
                            cos.size());
            return y;
        },
        py::arg("x"), py::arg("cos"), py::arg("sin"), py::arg("isa") = "",
        "Rotate-half RoPE of the first 2 * half dims of each row.");
    m.def(
        "softmax",
        [](const F32& x, const std::string& isa) {
            QE_CHECK(x.ndim() == 1 && x.size() >= 1, "softmax: expected x [n], n >= 1");
            py::array_t<float> y(x.size());
            std::copy_n(x.data(), x.size(), y.mutable_data());
            table(isa).softmax(y.mutable_data(), x.size());
            return y;
        },
        py::arg("x"), py::arg("isa") = "", "softmax(x).");
    m.def(
        "silu_mul",
        [](const F32& a, const F32& b, const std::string& isa) {
            QE_CHECK(a.ndim() == 1 && b.size() == a.size(), "silu_mul: expected a [n], b [n]");
            py::array_t<float> y(a.size());
            table(isa).silu_mul(a.data(), b.data(), y.mutable_data(), a.size());
            return y;
        },
        py::arg("a"), py::arg("b"), py::arg("isa") = "", "silu(a) * b.");
    m.def(
        "sigmoid_mul",
        [](const F32& x, const F32& g, const std::string& isa) {
            QE_CHECK(x.ndim() == 1 && g.size() == x.size(), "sigmoid_mul: expected x [n], g [n]");
            py::array_t<float> y(x.size());
            table(isa).sigmoid_mul(x.data(), g.data(), y.mutable_data(), x.size());
            return y;
        },
        py::arg("x"), py::arg("g"), py::arg("isa") = "", "x * sigmoid(g).");

    m.def(
        "conv1d_silu",
        [](const F32& w, const F32& state, const F32& x, const std::string& isa) {
            QE_CHECK(w.ndim() == 2 && state.ndim() == 2 && x.ndim() == 2 &&
                         state.shape(0) == w.shape(0) - 1 && state.shape(1) == w.shape(1) &&
                         x.shape(1) == w.shape(1),
                     "conv1d_silu: expected w [kw, c], state [kw - 1, c], x [t, c]");
            const int64_t kw = w.shape(0), c = w.shape(1), t = x.shape(0);
            py::array_t<float> s(shape_of(state));
            std::copy_n(state.data(), state.size(), s.mutable_data());
            py::array_t<float> y({t, c});
            table(isa).conv1d_silu(w.data(), s.mutable_data(), c, x.data(), c, y.mutable_data(), c,
                                   t, c, kw);
            return py::make_tuple(y, s);
        },
        py::arg("w"), py::arg("state"), py::arg("x"), py::arg("isa") = "",
        "Causal depthwise conv + SiLU: returns (y [t, c], new state).");
    m.def(
        "delta_rule",
        [](const F32& s, const F32& q, const F32& k, const F32& v, const F32& decay,
           const F32& beta, const std::string& isa) {
            QE_CHECK(s.ndim() == 2 && q.ndim() == 2 && k.ndim() == 2 && v.ndim() == 2,
                     "delta_rule: expected 2-D s, q, k, v");
            const int64_t dk = s.shape(0), dv = s.shape(1), t = q.shape(0);
            QE_CHECK(q.shape(1) == dk && shape_of(k) == shape_of(q) && v.shape(0) == t &&
                         v.shape(1) == dv && decay.size() == t && beta.size() == t,
                     "delta_rule: expected s [dk, dv], q, k [t, dk], v [t, dv], decay, beta [t]");
            // q, k, v of one token side by side, as the model lays them out: [t, 2 dk + dv].
            std::vector<float> u(t * (2 * dk + dv));
            for (int64_t i = 0; i < t; ++i) {
                std::copy_n(q.data() + i * dk, dk, u.data() + i * (2 * dk + dv));
                std::copy_n(k.data() + i * dk, dk, u.data() + i * (2 * dk + dv) + dk);
                std::copy_n(v.data() + i * dv, dv, u.data() + i * (2 * dk + dv) + 2 * dk);
            }
            py::array_t<float> state(shape_of(s));
            std::copy_n(s.data(), s.size(), state.mutable_data());
            py::array_t<float> o({t, dv});
            table(isa).delta_rule(state.mutable_data(), u.data(), u.data() + dk, u.data() + 2 * dk,
                                  2 * dk + dv, decay.data(), beta.data(), 1, o.mutable_data(), dv,
                                  t, dk, dv);
            return py::make_tuple(o, state);
        },
        py::arg("s"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("decay"), py::arg("beta"),
        py::arg("isa") = "",
        "Gated delta rule of one head over t tokens: returns (o [t, dv], new state).");
    m.def(
        "attention",
        [](const F32& q, const py::array& k, const py::array& v, float scale,
           const std::string& isa) {
            const auto [n_t, n_q, d, n] = attention_shape(q, k, v, "attention");
            py::array_t<float> out(shape_of(q));
            ScratchGuard scratch(qe::attention_scratch(n_t * n_q, n));
            if (py::isinstance<py::array_t<uint16_t>>(k)) {
                const U16 k16 = k, v16 = v;
                table(isa).attention_f16(q.data(), d, n_q * d, n_q, n_t, k16.data(), v16.data(), n,
                                         d, scale, scratch.data(), out.mutable_data(), d, n_q * d);
            } else {
                const F32 k32 = k, v32 = v;
                table(isa).attention_f32(q.data(), d, n_q * d, n_q, n_t, k32.data(), v32.data(), n,
                                         d, scale, scratch.data(), out.mutable_data(), d, n_q * d);
            }
            scratch.check();
            return out;
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("scale"), py::arg("isa") = "",
        "softmax(scale q k^T) v over one KV head; k, v as uint16 (f16 cache) or float32. q is "
        "[n_q, d] (every query sees all n positions) or [n_t, n_q, d]: n_t consecutive tokens, "
        "the last n_t positions of k, v, each seeing the positions up to its own (causal).");
    m.def(
        "attention_q8",
        [](const F32& q, const F32& k, const F32& v, float scale, const std::string& isa) {
            return attention_groups<qe::KeyGroupQ8, qe::ValueGroupQ8>(
                q, k, v, scale, qe::quantize_keys_q8, qe::quantize_values_q8,
                table(isa).attention_q8, "attention_q8");
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("scale"), py::arg("isa") = "",
        "attention over an int8 KV head: k, v [n, d] float32 are quantized as the model's "
        "cache stores them (groups of 16 positions); q as for attention.");
    m.def(
        "attention_q4",
        [](const F32& q, const F32& k, const F32& v, float scale, const std::string& isa) {
            return attention_groups<qe::KeyGroupQ4, qe::ValueGroupQ4>(
                q, k, v, scale, qe::quantize_keys_q4, qe::quantize_values_q4,
                table(isa).attention_q4, "attention_q4");
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("scale"), py::arg("isa") = "",
        "attention over a 4-bit KV head, as attention_q8.");
}

}  // namespace qe_py
