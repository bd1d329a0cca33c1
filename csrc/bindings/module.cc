// SPDX-License-Identifier: Apache-2.0
// qwen_edge._core: the thin pybind11 layer over the native core. Private: qwen_edge/runtime.py
// is its only importer. Arrays come in through the buffer protocol without copies; qe::Error
// becomes _core.Error (a RuntimeError), which runtime.py maps to qwen_edge.errors.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common.h"
#include "cpu_features.h"
#include "dispatch.h"

namespace py = pybind11;

namespace {

using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;

const qe::KernelTable& table_for(const std::string& isa) { return qe::select_table(isa); }

py::array_t<float> gemv_f32(const F32Array& w, const F32Array& x, const std::string& isa) {
    QE_CHECK(w.ndim() == 2 && x.ndim() == 1, "gemv_f32: expected w [rows, k] and x [k]");
    QE_CHECK(w.shape(1) == x.shape(0), "gemv_f32: w has ", w.shape(1), " columns, x has ",
             x.shape(0), " entries");
    const auto& table = table_for(isa);
    const int64_t rows = w.shape(0), k = w.shape(1);
    py::array_t<float> y(rows);
    {
        py::gil_scoped_release release;
        table.gemv_f32(w.data(), k, x.data(), y.mutable_data(), rows, k);
    }
    return y;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "qwen-edge native core (private; use qwen_edge.runtime)";
#ifdef QE_VERSION
    m.attr("__version__") = QE_VERSION;
#endif
    py::register_exception<qe::Error>(m, "Error", PyExc_RuntimeError);

    m.def(
        "cpu_info",
        [] {
            const qe::CpuInfo& cpu = qe::cpu_info();
            py::dict d;
            d["arch"] = cpu.arch;
            d["vendor"] = cpu.vendor;
            d["features"] = qe::feature_names(cpu.features);
            return d;
        },
        "The CPU this process runs on: arch, vendor and the detected feature names.");
    m.def(
        "compiled_isas",
        [] {
            std::vector<std::string> tags;
            for (const auto* t : qe::compiled_tables()) tags.emplace_back(t->tag);
            return tags;
        },
        "Tags of every kernel table compiled into this build, best first.");
    m.def(
        "available_isas",
        [] {
            std::vector<std::string> tags;
            for (const auto* t : qe::supported_tables()) tags.emplace_back(t->tag);
            return tags;
        },
        "Tags of the kernel tables this CPU can run, best first.");
    m.def(
        "selected_isa", [](const std::string& isa) { return std::string(table_for(isa).tag); },
        py::arg("isa") = "",
        "The table that would be used: `isa` if given, else QWEN_EDGE_ISA, else the best.");
    m.def("gemv_f32", &gemv_f32, py::arg("w"), py::arg("x"), py::arg("isa") = "",
          "y = w @ x in float32 with the kernel table `isa` (test surface).");
}
