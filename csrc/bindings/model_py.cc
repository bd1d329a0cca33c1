// SPDX-License-Identifier: Apache-2.0
// _core.Model and _core.State: the Qwen3.5 forward pass for qwen_edge/runtime.py. Weights come
// in without copies (buffers the model keeps alive); forward releases the GIL and writes the
// logits into an array the caller allocated.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "bindings/bindings.h"
#include "common.h"
#include "model/qwen35.h"

namespace py = pybind11;

namespace qe_py {
namespace {

template <typename T>
T get(const py::dict& d, const char* key) {
    QE_CHECK(d.contains(key), "config: missing '", key, "'");
    try {
        return d[key].cast<T>();
    } catch (const py::cast_error&) {
        throw qe::Error(std::string("config: '") + key + "' has the wrong type");
    }
}

template <typename T>
T get_or(const py::dict& d, const char* key, T fallback) {
    return d.contains(key) && !d[key].is_none() ? get<T>(d, key) : fallback;
}

// The Python ModelConfig.to_dict() (HF text_config names) as the C++ config.
qe::Qwen35Config config_from_dict(const py::dict& d) {
    qe::Qwen35Config c;
    c.n_vocab = get<int64_t>(d, "vocab_size");
    c.n_embd = get<int64_t>(d, "hidden_size");
    c.n_ff = get<int64_t>(d, "intermediate_size");
    c.n_layer = get<int64_t>(d, "num_hidden_layers");
    c.n_head = get<int64_t>(d, "num_attention_heads");
    c.n_head_kv = get<int64_t>(d, "num_key_value_heads");
    c.head_dim = get<int64_t>(d, "head_dim");
    c.n_lin_head_k = get<int64_t>(d, "linear_num_key_heads");
    c.n_lin_head_v = get<int64_t>(d, "linear_num_value_heads");
    c.lin_head_dim_k = get<int64_t>(d, "linear_key_head_dim");
    c.lin_head_dim_v = get<int64_t>(d, "linear_value_head_dim");
    c.lin_conv_kernel = get_or<int64_t>(d, "linear_conv_kernel_dim", 4);
    for (const auto& t : get<std::vector<std::string>>(d, "layer_types")) {
        QE_CHECK(t == "full_attention" || t == "linear_attention", "config: unknown layer type '",
                 t, "'");
        c.layer_full.push_back(t == "full_attention" ? 1 : 0);
    }
    c.rms_norm_eps = get_or<float>(d, "rms_norm_eps", 1e-6f);
    c.rope_theta = get_or<float>(d, "rope_theta", 1e7f);
    c.partial_rotary_factor = get_or<float>(d, "partial_rotary_factor", 0.25f);
    c.tie_word_embeddings = get_or<bool>(d, "tie_word_embeddings", false);
    c.max_position_embeddings = get_or<int64_t>(d, "max_position_embeddings", 262144);
    c.validate();
    return c;
}

qe::KvType kv_type(const std::string& name) {
    QE_CHECK(name == "f16" || name == "f32", "kv cache type must be 'f16' or 'f32', got '",
             name, "'");
    return name == "f16" ? qe::KvType::kF16 : qe::KvType::kF32;
}

class PyModel {
public:
    // tensors: name -> (format, shape, buffer). The buffers stay referenced by the model.
    PyModel(const py::dict& config, const py::dict& tensors, int threads, const std::string& isa,
            bool pin, int spin_us) {
        const qe::Qwen35Config c = config_from_dict(config);
        qe::TensorMap map;
        py::list owners;
        for (const auto& item : tensors) {
            const std::string name = item.first.cast<std::string>();
            const py::tuple entry = item.second.cast<py::tuple>();
            QE_CHECK(entry.size() == 3, "tensor '", name, "': expected (format, shape, buffer)");
            qe::TensorView view;
            const std::string format = entry[0].cast<std::string>();
            QE_CHECK(qe::parse_format(format, &view.format), "tensor '", name,
                     "': unknown format '", format, "'");
            view.shape = entry[1].cast<std::vector<int64_t>>();
            const py::buffer buf = entry[2].cast<py::buffer>();
            const py::buffer_info info = buf.request();
            QE_CHECK(info.ndim <= 1 || info.strides.back() == info.itemsize,
                     "tensor '", name, "': buffer must be contiguous");
            view.data = static_cast<const uint8_t*>(info.ptr);
            view.size = uint64_t(info.size) * uint64_t(info.itemsize);
            map[name] = view;
            owners.append(buf);
        }
        // Released with the GIL held: the last reference may go away in any thread.
        auto* holder = new py::object(std::move(owners));
        std::shared_ptr<const void> keepalive(holder, [](const void* p) {
            py::gil_scoped_acquire gil;
            delete static_cast<const py::object*>(p);
        });
        qe::ModelOptions options;
        options.threads = threads;
        options.isa = isa;
        options.pin = pin;
        options.spin_us = spin_us;
        model_ = std::make_unique<qe::Qwen35Model>(c, map, std::move(keepalive), options);
    }

    qe::Qwen35Model& model() { return *model_; }

private:
    std::unique_ptr<qe::Qwen35Model> model_;
};

using I32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

}  // namespace

void bind_model(py::module_& m) {
    py::class_<qe::State>(m, "State", "Caches and position of one sequence (see runtime.py).")
        .def_property_readonly("position", &qe::State::position)
        .def_property_readonly("context", &qe::State::context)
        .def_property_readonly("kv_type",
                               [](const qe::State& s) {
                                   return s.kv_type() == qe::KvType::kF16 ? "f16" : "f32";
                               })
        .def_property_readonly("cache_bytes", &qe::State::cache_bytes)
        .def("copy", [](const qe::State& s) { return std::make_unique<qe::State>(s); })
        .def("copy_from", &qe::State::copy_from, py::arg("other"))
        .def("reset", &qe::State::reset);

    py::class_<PyModel>(m, "Model", "The Qwen3.5 forward pass over weights in memory.")
        .def(py::init<const py::dict&, const py::dict&, int, const std::string&, bool, int>(),
             py::arg("config"), py::arg("tensors"), py::arg("threads") = 1, py::arg("isa") = "",
             py::arg("pin") = false, py::arg("spin_us") = 100)
        .def_property_readonly("isa", [](PyModel& p) { return p.model().kernels().tag; })
        .def_property_readonly("threads", [](PyModel& p) { return p.model().threads(); })
        .def_property_readonly("n_vocab", [](PyModel& p) { return p.model().config().n_vocab; })
        .def_property_readonly("decode_weight_bytes",
                               [](PyModel& p) { return p.model().decode_weight_bytes(); })
        .def(
            "new_state",
            [](PyModel& p, int64_t context, int64_t batch, const std::string& kv) {
                return p.model().new_state(context, batch, kv_type(kv));
            },
            py::arg("context"), py::arg("batch") = 64, py::arg("kv") = "f16")
        .def(
            "forward",
            [](PyModel& p, const I32& tokens, qe::State& state, py::array_t<float> out,
               bool all_logits) {
                QE_CHECK(tokens.ndim() == 1 && tokens.size() >= 1,
                         "forward: tokens must be a non-empty 1-D array");
                const int64_t n = tokens.size(), v = p.model().config().n_vocab;
                QE_CHECK(out.ndim() >= 1 && (out.flags() & py::array::c_style) &&
                             out.size() == (all_logits ? n * v : v),
                         "forward: out must be a C-contiguous float32 array of ",
                         all_logits ? n * v : v, " elements");
                float* dst = out.mutable_data();
                py::gil_scoped_release release;
                p.model().forward(tokens.data(), n, state, dst, all_logits);
            },
            py::arg("tokens"), py::arg("state"), py::arg("out"), py::arg("all_logits") = false,
            "Runs tokens after the state; writes logits of the last position (or all) to out.");
}

}  // namespace qe_py
