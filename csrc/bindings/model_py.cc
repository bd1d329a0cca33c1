// SPDX-License-Identifier: Apache-2.0
// _core.Model and _core.State: the Qwen3.5 forward pass for qwen_edge/backends/native.py. Weights come
// in without copies (buffers the model keeps alive); forward releases the GIL and writes the
// logits into an array the caller allocated.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <string>

#include "bindings/bindings.h"
#include "common.h"
#include "model/qwen35.h"
#include "runtime/membench.h"

namespace py = pybind11;

namespace qe_py {
namespace {

qe::KvType kv_type(const std::string& name) {
    if (name == "f16") return qe::KvType::kF16;
    if (name == "f32") return qe::KvType::kF32;
    if (name == "q4") return qe::KvType::kQ4;
    QE_CHECK(name == "q8", "kv cache type must be 'f16', 'f32', 'q8' or 'q4', got '", name, "'");
    return qe::KvType::kQ8;
}

const char* kv_name(qe::KvType t) {
    switch (t) {
        case qe::KvType::kF16: return "f16";
        case qe::KvType::kF32: return "f32";
        case qe::KvType::kQ8: return "q8";
        case qe::KvType::kQ4: return "q4";
    }
    return "?";
}

class PyModel {
public:
    // config_json: the model file header's "config" object (qwen_edge ModelConfig.to_dict()).
    // tensors: name -> (format, shape, buffer); the buffers stay referenced by the model.
    PyModel(const std::string& config_json, const py::dict& tensors, int threads,
            const std::string& isa, bool pin, int spin_us) {
        const qe::ModelConfig c =
            qe::ModelConfig::from_json(qe::Json::parse(config_json), "model config");
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
            QE_CHECK(info.ndim <= 1 || info.strides.back() == info.itemsize, "tensor '", name,
                     "': buffer must be contiguous");
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
        model_ = std::make_unique<qe::Qwen35Model>(c, map, std::move(keepalive),
                                                   options(threads, isa, pin, spin_us));
    }

    explicit PyModel(std::unique_ptr<qe::Qwen35Model> model) : model_(std::move(model)) {}

    static qe::ModelOptions options(int threads, const std::string& isa, bool pin, int spin_us) {
        qe::ModelOptions o;
        o.threads = threads;
        o.isa = isa;
        o.pin = pin;
        o.spin_us = spin_us;
        return o;
    }

    qe::Qwen35Model& model() { return *model_; }

    // Forward passes that have released the GIL and not yet taken it back; counted with the
    // GIL held, so once stop() has run and this reads 0, no thread is inside the core or about
    // to enter it (see qwen_edge/backends/native.py's shutdown).
    std::atomic<int> running{0};

private:
    std::unique_ptr<qe::Qwen35Model> model_;
};

// Whether this is the interpreter's main thread: the one Python runs signal handlers on.
bool on_main_thread() {
    static const unsigned long main_id =
        py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
    return PyThread_get_thread_ident() == main_id;
}

// Between layers on the main thread: runs pending signal handlers (Ctrl-C raises
// KeyboardInterrupt, left set for the caller) at most every 50 ms, so a long prompt stops
// promptly while a decode step, shorter than that, never takes the GIL back.
qe::Qwen35Model::StopFn signal_check() {
    using Clock = std::chrono::steady_clock;
    return [next = Clock::now() + std::chrono::milliseconds(50)]() mutable {
        const auto now = Clock::now();
        if (now < next) return false;
        next = now + std::chrono::milliseconds(50);
        py::gil_scoped_acquire gil;
        return PyErr_CheckSignals() != 0;
    };
}

using I32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

// The data of a caller-allocated float32 output array of exactly n elements.
float* out_array(py::array_t<float>& a, int64_t n, const char* what) {
    QE_CHECK(a.ndim() >= 1 && (a.flags() & py::array::c_style) && a.size() == n, what,
             " must be a C-contiguous float32 array of ", n, " elements");
    return a.mutable_data();
}

}  // namespace

void bind_model(py::module_& m) {
    m.attr("ATTENTION_TOKENS") = qe::kAttentionTokens;
    m.def(
        "read_bandwidth",
        [](uint64_t bytes, int threads, int repetitions) {
            py::gil_scoped_release release;
            return qe::read_bandwidth_gbs(bytes, threads, repetitions);
        },
        py::arg("bytes"), py::arg("threads") = 1, py::arg("repetitions") = 3,
        "Streaming read bandwidth in GB/s: `threads` threads each read their part of a buffer.");
    m.def(
        "state_bytes_for",
        [](const std::string& config_json, int64_t context, int64_t batch, const std::string& kv,
           int threads) {
            const qe::ModelConfig c =
                qe::ModelConfig::from_json(qe::Json::parse(config_json), "model config");
            return qe::State::bytes_for(c, context, batch, kv_type(kv), threads);
        },
        py::arg("config_json"), py::arg("context"), py::arg("batch") = 128,
        py::arg("kv") = "f16", py::arg("threads") = 1,
        "Bytes a state of a model with this config would allocate, without loading weights.");
    py::class_<qe::State>(m, "State", "Caches and position of one sequence (see qwen_edge/backends/native.py).")
        .def_property_readonly("position", &qe::State::position)
        .def_property_readonly("context", &qe::State::context)
        .def_property_readonly(
            "kv_type",
            [](const qe::State& s) { return kv_name(s.kv_type()); })
        .def_property_readonly("cache_bytes", &qe::State::cache_bytes)
        .def_property_readonly("allocated_bytes", &qe::State::allocated_bytes)
        .def("copy", [](const qe::State& s) { return std::make_unique<qe::State>(s); })
        .def("copy_from", &qe::State::copy_from, py::arg("other"))
        .def("reset", &qe::State::reset)
        .def("enable_speculation", &qe::State::enable_speculation, py::arg("slots"))
        .def_property_readonly("speculation_enabled", &qe::State::speculation_enabled)
        .def_property_readonly("checkpoint_slots", &qe::State::checkpoint_slots)
        .def_property_readonly("mtp_position", &qe::State::mtp_position)
        .def("set_mtp_position", &qe::State::set_mtp_position, py::arg("position"))
        .def_property_readonly("mtp_ready", &qe::State::mtp_ready)
        .def(
            "set_mtp_hidden",
            [](qe::State& s, py::array_t<float, py::array::c_style | py::array::forcecast> h) {
                QE_CHECK(h.size() == s.config().n_embd, "set_mtp_hidden: hidden must have ",
                         s.config().n_embd, " elements, got ", h.size());
                s.set_mtp_hidden(h.data());
            },
            py::arg("hidden"))
        .def_property_readonly("mtp_hidden", [](const qe::State& s) -> py::object {
            if (!s.mtp_ready()) return py::none();
            const int64_t e = s.config().n_embd;
            py::array_t<float> out(e);
            std::memcpy(out.mutable_data(), s.mtp_hidden(), size_t(e) * sizeof(float));
            return std::move(out);
        });

    py::class_<PyModel>(m, "Model", "The Qwen3.5 forward pass over weights in memory.")
        .def(py::init<const std::string&, const py::dict&, int, const std::string&, bool, int>(),
             py::arg("config_json"), py::arg("tensors"), py::arg("threads") = 1,
             py::arg("isa") = "", py::arg("pin") = false, py::arg("spin_us") = 100)
        .def_static(
            "load",
            [](const std::string& path, int threads, const std::string& isa, bool pin, int spin_us,
               bool verify) {
                std::unique_ptr<qe::Qwen35Model> model;
                {
                    py::gil_scoped_release release;
                    model = qe::Qwen35Model::load(
                        path, PyModel::options(threads, isa, pin, spin_us), verify);
                }
                return std::make_unique<PyModel>(std::move(model));
            },
            py::arg("path"), py::arg("threads") = 1, py::arg("isa") = "", py::arg("pin") = false,
            py::arg("spin_us") = 100, py::arg("verify") = false,
            "Maps and validates a model file and builds the model on it.")
        .def_property_readonly("header_text",
                               [](PyModel& p) {
                                   const qe::ModelFile* f = p.model().file();
                                   return py::bytes(f ? f->header_text() : std::string());
                               })
        .def_property_readonly("file_size",
                               [](PyModel& p) {
                                   const qe::ModelFile* f = p.model().file();
                                   return f ? f->file_size() : uint64_t{0};
                               })
        .def(
            "rollback",
            [](PyModel& p, qe::State& state, int64_t n) {
                py::gil_scoped_release release;
                p.model().rollback(state, n);
            },
            py::arg("state"), py::arg("n"),
            "Undoes the last n tokens of the state's last checkpointed forward, exactly.")
        .def(
            "stop", [](PyModel& p) { p.model().stop_all(); },
            "Makes running forward passes stop at their next layer and later ones raise at once.")
        .def_property_readonly("running", [](PyModel& p) { return p.running.load(); },
                               "Forward passes inside the core now.")
        .def_property_readonly("isa", [](PyModel& p) { return p.model().kernels().tag; })
        .def_property_readonly("threads", [](PyModel& p) { return p.model().threads(); })
        .def_property_readonly("active_threads",
                               [](PyModel& p) { return p.model().active_threads(); })
        .def(
            "set_active_threads", [](PyModel& p, int n) { p.model().set_active_threads(n); },
            py::arg("n"), "Threads the next forward passes use, clamped to 1..threads.")
        .def_property_readonly("vocab_size",
                               [](PyModel& p) { return p.model().config().vocab_size; })
        .def_property_readonly("decode_weight_bytes",
                               [](PyModel& p) { return p.model().decode_weight_bytes(); })
        .def(
            "new_state",
            [](PyModel& p, int64_t context, int64_t batch, const std::string& kv) {
                return p.model().new_state(context, batch, kv_type(kv));
            },
            py::arg("context"), py::arg("batch") = 128, py::arg("kv") = "f16")
        .def(
            "state_bytes",
            [](PyModel& p, int64_t context, int64_t batch, const std::string& kv) {
                return qe::State::bytes_for(p.model().config(), context, batch, kv_type(kv),
                                            p.model().threads());
            },
            py::arg("context"), py::arg("batch") = 128, py::arg("kv") = "f16",
            "Bytes new_state(context, batch, kv) would allocate (caches + scratch).")
        .def(
            "forward",
            [](PyModel& p, const I32& tokens, qe::State& state, py::array_t<float> out,
               bool all_logits, std::optional<py::array_t<float>> hidden, bool checkpoint) {
                QE_CHECK(tokens.ndim() == 1 && tokens.size() >= 1,
                         "forward: tokens must be a non-empty 1-D array");
                const int64_t n = tokens.size(), v = p.model().config().vocab_size;
                QE_CHECK(out.ndim() >= 1 && (out.flags() & py::array::c_style) &&
                             out.size() == (all_logits ? n * v : v),
                         "forward: out must be a C-contiguous float32 array of ",
                         all_logits ? n * v : v, " elements");
                float* dst = out.mutable_data();
                // Checked with the GIL held: after stop() no new pass releases it, so none can
                // need it back while the interpreter finalizes (which would abort the process).
                if (p.model().stopping()) throw qe::Interrupted("forward: the model is stopping");
                float* hid = hidden ? out_array(*hidden, n * p.model().config().n_embd,
                                                "forward: hidden")
                                    : nullptr;
                const qe::Qwen35Model::StopFn stop =
                    on_main_thread() ? signal_check() : qe::Qwen35Model::StopFn();
                p.running.fetch_add(1);
                try {
                    py::gil_scoped_release release;
                    p.model().forward(tokens.data(), n, state, dst, all_logits, stop, hid, checkpoint);
                } catch (const qe::Interrupted&) {
                    p.running.fetch_sub(1);
                    if (PyErr_Occurred()) throw py::error_already_set();  // KeyboardInterrupt
                    throw;
                } catch (...) {
                    p.running.fetch_sub(1);
                    throw;
                }
                p.running.fetch_sub(1);
            },
            py::arg("tokens"), py::arg("state"), py::arg("out"), py::arg("all_logits") = false,
            py::arg("hidden") = py::none(), py::arg("checkpoint") = false,
            "Runs tokens after the state; writes logits of the last position (or all) to out, "
            "and every position's final-normed hidden state to `hidden` when given; "
            "`checkpoint` lets State.rollback undo up to len(tokens) - 1 of them.")
        .def(
            "forward_multi",
            [](PyModel& p, const py::list& tokens, const py::list& states, py::array_t<float> out,
               const std::vector<bool>& want) {
                const int64_t count = int64_t(tokens.size()), v = p.model().config().vocab_size;
                QE_CHECK(count >= 1 && int64_t(states.size()) == count &&
                             int64_t(want.size()) == count,
                         "forward_multi: tokens, states and want must have one entry per sequence");
                QE_CHECK(out.ndim() >= 1 && (out.flags() & py::array::c_style) &&
                             out.size() == count * v,
                         "forward_multi: out must be a C-contiguous float32 array of ", count * v,
                         " elements");
                std::vector<I32> arrays;  // keep the converted arrays alive during the step
                std::vector<qe::SeqStep> steps(static_cast<size_t>(count));
                float* dst = out.mutable_data();
                for (int64_t i = 0; i < count; ++i) {
                    arrays.push_back(tokens[size_t(i)].cast<I32>());
                    const I32& a = arrays.back();
                    QE_CHECK(a.ndim() == 1 && a.size() >= 1, "forward_multi: tokens of sequence ",
                             i, " must be a non-empty 1-D array");
                    steps[size_t(i)] = qe::SeqStep{a.data(), int64_t(a.size()),
                                                   &states[size_t(i)].cast<qe::State&>(),
                                                   want[size_t(i)] ? dst + i * v : nullptr};
                }
                // As in forward: counted while the GIL is released, so shutdown can wait for it.
                if (p.model().stopping()) throw qe::Interrupted("forward: the model is stopping");
                p.running.fetch_add(1);
                try {
                    py::gil_scoped_release release;
                    p.model().forward_multi(steps.data(), count);
                } catch (...) {
                    p.running.fetch_sub(1);
                    throw;
                }
                p.running.fetch_sub(1);
            },
            py::arg("tokens"), py::arg("states"), py::arg("out"), py::arg("want"),
            "One step over several sequences (each its tokens after its state); writes the last "
            "position's logits of sequence i to out[i] where want[i].")
        .def_property_readonly("has_mtp", [](PyModel& p) { return p.model().has_mtp(); })
        .def("draft_rows", [](PyModel& p, int64_t rows) { return p.model().draft_rows(rows); },
             py::arg("rows"))
        .def("mtp_weight_bytes",
             [](PyModel& p, int64_t rows) { return p.model().mtp_weight_bytes(rows); },
             py::arg("rows"))
        .def(
            "mtp_forward",
            [](PyModel& p, const I32& tokens, py::array_t<float> hidden, qe::State& state,
               py::array_t<float> logits, int64_t rows, py::array_t<float> hidden_out) {
                QE_CHECK(tokens.ndim() == 1 && tokens.size() >= 1,
                         "mtp_forward: tokens must be a non-empty 1-D array");
                const int64_t n = tokens.size(), e = p.model().config().n_embd;
                QE_CHECK(hidden.ndim() >= 1 && (hidden.flags() & py::array::c_style) &&
                             hidden.size() == n * e,
                         "mtp_forward: hidden must be a C-contiguous float32 array of ", n * e,
                         " elements");
                float* lg = out_array(logits, p.model().draft_rows(rows), "mtp_forward: logits");
                float* ho = out_array(hidden_out, e, "mtp_forward: hidden_out");
                const float* hin = hidden.data();
                // Counted as a running pass, as forward (it releases the GIL too).
                if (p.model().stopping()) throw qe::Interrupted("forward: the model is stopping");
                p.running.fetch_add(1);
                try {
                    py::gil_scoped_release release;
                    p.model().mtp_forward(tokens.data(), hin, n, state, lg, rows, ho);
                } catch (...) {
                    p.running.fetch_sub(1);
                    throw;
                }
                p.running.fetch_sub(1);
            },
            py::arg("tokens"), py::arg("hidden"), py::arg("state"), py::arg("logits"),
            py::arg("rows"), py::arg("hidden_out"),
            "The MTP head over (hidden[t], tokens[t]) pairs: the last pair's draft logits over "
            "the first draft_rows(rows) LM-head rows, and its output hidden state.");
}

}  // namespace qe_py
