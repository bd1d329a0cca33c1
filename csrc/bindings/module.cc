// SPDX-License-Identifier: Apache-2.0
// qwen_edge._core: the thin pybind11 layer over the native core. Private: qwen_edge/backends/native.py
// is its only importer. Arrays come in through the buffer protocol without copies; qe::Error
// becomes _core.Error (a RuntimeError), which backends/native.py maps to qwen_edge.errors.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "common.h"
#include "cpu_features.h"
#include "dispatch.h"
#include "model/model_file.h"
#include "quant/formats.h"
#include "quant/quantize.h"
#include "runtime/thread_pool.h"

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

using U8Array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

// A packed matrix over a Python byte array, after checking its size against the format.
qe::PackedMatrix packed_view(const std::string& format, const U8Array& data, int64_t rows,
                             int64_t k) {
    qe::WeightFormat f;
    QE_CHECK(qe::parse_format(format, &f) && qe::is_quantized(f), "unknown packed format '",
             format, "'");
    qe::PackedLayout layout;
    QE_CHECK(qe::packed_layout(f, rows, k, &layout), "bad shape [", rows, ", ", k, "] for ",
             format, " (k must be a positive multiple of 32)");
    QE_CHECK(uint64_t(data.size()) == layout.total_bytes, format, " [", rows, ", ", k,
             "] needs ", layout.total_bytes, " bytes, got ", data.size());
    return qe::PackedMatrix::view(f, layout, data.data());
}

// Activations x [m, k] quantized with the table's own quantizer.
std::vector<qe::BlockQ8A> quantize_rows(const qe::KernelTable& table, const F32Array& x,
                                        int64_t k) {
    const int64_t m = x.size() / k;
    std::vector<qe::BlockQ8A> blocks(m * (k / qe::kBlockK));
    for (int64_t t = 0; t < m; ++t)
        table.quantize_q8a(x.data() + t * k, blocks.data() + t * (k / qe::kBlockK), k);
    return blocks;
}

py::tuple quantize_q8a(const F32Array& x, const std::string& isa) {
    QE_CHECK(x.ndim() == 1 && x.shape(0) % qe::kBlockK == 0,
             "quantize_q8a: x must be 1-D with a multiple of 32 entries");
    const auto& table = table_for(isa);
    const int64_t nb = x.shape(0) / qe::kBlockK;
    std::vector<qe::BlockQ8A> blocks = quantize_rows(table, x, x.shape(0));
    py::array_t<float> d(nb);
    py::array_t<int32_t> sum(nb);
    py::array_t<int8_t> q({nb, int64_t{qe::kBlockK}});
    for (int64_t b = 0; b < nb; ++b) {
        d.mutable_at(b) = blocks[b].d;
        sum.mutable_at(b) = blocks[b].sum;
        for (int j = 0; j < qe::kBlockK; ++j) q.mutable_at(b, j) = blocks[b].q[j];
    }
    return py::make_tuple(d, sum, q);
}

// x as position j of an integer KV cache (KG, VG: the int8 or 4-bit groups, stored by store_key
// and store_value), read back from the groups: (key d [nb], key q [nb, 32], value d [nb],
// value q [nb, 32]), the codes as formats.h's key_code and value_code read them.
template <typename KG, typename VG>
py::tuple quantize_kv(const F32Array& x, int64_t j, void (*store_key)(const float*, KG*, int64_t, int64_t),
                      void (*store_value)(const float*, VG*, int64_t, int64_t), const char* name) {
    QE_CHECK(x.ndim() == 1 && x.shape(0) % qe::kBlockK == 0 && j >= 0 && j < qe::kKvGroup, name,
             ": x must be 1-D with a multiple of 32 entries, j in 0..15");
    const int64_t d = x.shape(0), nb = d / qe::kBlockK;
    std::vector<KG> keys(size_t(qe::kv_groups(1, d)));
    std::vector<VG> values(keys.size());
    store_key(x.data(), keys.data(), j, d);
    store_value(x.data(), values.data(), j, d);
    py::array_t<float> kd(nb), vd(nb);
    py::array_t<int8_t> kq({nb, int64_t{qe::kBlockK}}), vq({nb, int64_t{qe::kBlockK}});
    for (int64_t b = 0; b < nb; ++b) {
        kd.mutable_at(b) = keys[b].d[j];
        vd.mutable_at(b) = values[b].d[j];
        for (int e = 0; e < qe::kBlockK; ++e) {
            kq.mutable_at(b, e) = int8_t(qe::key_code(keys[b], int(j), e));
            vq.mutable_at(b, e) = int8_t(qe::value_code(values[b], int(j), e));
        }
    }
    return py::make_tuple(kd, kq, vd, vq);
}

// y [m, rows] = x [m, k] @ W.T with activations quantized to q8a; m == 1 uses the gemv kernel.
py::array_t<float> matmul_q8a(const std::string& format, const U8Array& data, int64_t rows,
                              int64_t k, const F32Array& x, const std::string& isa) {
    const qe::PackedMatrix w = packed_view(format, data, rows, k);
    QE_CHECK(x.ndim() == 2 && x.shape(1) == k, "matmul_q8a: x must be [m, ", k, "]");
    const auto& table = table_for(isa);
    const int64_t m = x.shape(0);
    std::vector<qe::BlockQ8A> blocks = quantize_rows(table, x, k);
    std::vector<float> y(m * w.rows_padded);
    {
        py::gil_scoped_release release;
        if (m == 1) {
            table.gemv_q8a(w, blocks.data(), y.data(), 0, w.groups);
        } else {
            table.gemm_q8a(w, blocks.data(), m, y.data(), w.rows_padded, 0, w.groups);
        }
    }
    py::array_t<float> out({m, rows});
    for (int64_t t = 0; t < m; ++t)
        std::copy_n(y.data() + t * w.rows_padded, rows, out.mutable_data(t, 0));
    return out;
}

py::array_t<float> dequantize(const std::string& format, const U8Array& data, int64_t rows,
                              int64_t k, const std::string& isa) {
    const qe::PackedMatrix w = packed_view(format, data, rows, k);
    const auto& table = table_for(isa);
    py::array_t<float> out({rows, k});
    for (int64_t r = 0; r < rows; ++r) table.dequantize_row(w, r, out.mutable_data(r, 0));
    return out;
}

uint64_t packed_size(const std::string& format, int64_t rows, int64_t k) {
    qe::WeightFormat f;
    QE_CHECK(qe::parse_format(format, &f) && qe::is_quantized(f), "unknown packed format '",
             format, "'");
    qe::PackedLayout layout;
    QE_CHECK(qe::packed_layout(f, rows, k, &layout), "bad shape [", rows, ", ", k, "] for ",
             format);
    return layout.total_bytes;
}

// Quantizes float32 rows x [n, k], the rows [row0, row0 + n) of a packed [rows, k] tensor, into
// `out` (the whole tensor's bytes, zero-filled; row0 a multiple of 8), on `threads` threads
// that take row groups from a shared counter. False if x holds a NaN or an infinity.
bool quantize_into(const std::string& format, const F32Array& x, int64_t rows, int64_t row0,
                   py::buffer out, int threads, const std::string& isa,
                   const std::optional<F32Array>& importance) {
    qe::WeightFormat f;
    QE_CHECK(qe::parse_format(format, &f) && qe::is_quantized(f), "unknown packed format '",
             format, "'");
    QE_CHECK(x.ndim() == 2, "quantize_into: x must be [n, k]");
    const int64_t n = x.shape(0), k = x.shape(1);
    qe::PackedLayout lay;
    QE_CHECK(qe::packed_layout(f, rows, k, &lay), "bad shape [", rows, ", ", k, "] for ", format,
             " (k must be a positive multiple of 32)");
    QE_CHECK(row0 >= 0 && row0 % qe::kRowPack == 0 && n >= 0 && row0 + n <= rows,
             "quantize_into: rows [", row0, ", ", row0 + n, ") do not fit [0, ", rows,
             ") at a multiple of 8");
    py::buffer_info info = out.request(true);
    QE_CHECK(info.itemsize == 1 && info.ndim == 1 && info.strides[0] == 1 &&
                 uint64_t(info.size) == lay.total_bytes,
             "quantize_into: out must be ", lay.total_bytes, " contiguous bytes, got ",
             info.size);
    uint8_t* dst = static_cast<uint8_t*>(info.ptr);
    const float* imp = nullptr;
    if (importance) {
        QE_CHECK(importance->ndim() == 1 && importance->shape(0) == k,
                 "quantize_into: importance must hold one weight per column (", k, ")");
        imp = importance->data();
        for (int64_t i = 0; i < k; ++i)
            QE_CHECK(std::isfinite(imp[i]) && imp[i] > 0.0f,
                     "quantize_into: importance must be positive and finite");
    }
    if (!isa.empty()) {
        int n_isas = 0;
        const char* const* isas = qe::quantizer_isas(&n_isas);
        QE_CHECK(std::find(isas, isas + n_isas, isa) != isas + n_isas, "quantizer isa '", isa,
                 "' is not available here (", isas[0], n_isas > 1 ? ", ..." : "", ")");
    }
    const int64_t g0 = row0 / qe::kRowPack;
    const int64_t g1 = (row0 + n + qe::kRowPack - 1) / qe::kRowPack;
    std::atomic<bool> finite{true};
    {
        py::gil_scoped_release release;
        qe::ThreadPool::Options opts;
        opts.threads = std::max(1, threads);
        opts.spin_us = 0;
        qe::ThreadPool pool(opts);
        pool.for_each(g1 - g0, 4, [&](int64_t begin, int64_t end, int) {
            if (!qe::quantize_row_groups(f, lay, x.data(), row0, n, g0 + begin, g0 + end, dst,
                                         isa.c_str(), imp))
                finite.store(false, std::memory_order_relaxed);
        });
    }
    return finite.load();
}

// Opens and validates a model file natively; returns its header text and tensor table.
py::dict open_model_file(const std::string& path, bool verify) {
    std::unique_ptr<qe::ModelFile> file;
    {
        py::gil_scoped_release release;
        file = qe::ModelFile::open(path, verify);
    }
    py::list tensors;
    for (const auto& t : file->tensors()) {
        py::dict d;
        d["name"] = t.name;
        d["format"] = qe::format_name(t.format);
        d["shape"] = t.shape;
        d["offset"] = t.offset;
        d["size"] = t.size;
        tensors.append(d);
    }
    py::dict out;
    out["header"] = py::bytes(file->header_text());
    out["file_size"] = file->file_size();
    out["tensors"] = tensors;
    return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "qwen-edge native core (private; use qwen_edge.runtime)";
#ifdef QE_VERSION
    m.attr("__version__") = QE_VERSION;
#endif
    py::register_exception<qe::Error>(m, "Error", PyExc_RuntimeError);
    // Registered after Error, so it is tried first.
    py::register_exception<qe::ContextLengthError>(m, "ContextLengthError", PyExc_RuntimeError);
    py::register_exception<qe::Interrupted>(m, "Interrupted", PyExc_RuntimeError);

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
    m.def("quantize_q8a", &quantize_q8a, py::arg("x"), py::arg("isa") = "",
          "q8a blocks of x as (d [nb], sum [nb], q [nb, 32]) (test surface).");
    m.def(
        "quantize_kv_q8",
        [](const F32Array& x, int64_t j) {
            return quantize_kv(x, j, qe::store_key_q8, qe::store_value_q8, "quantize_kv_q8");
        },
        py::arg("x"), py::arg("j") = 0,
        "x as position j of the int8 KV cache, read back from its key and value groups: "
        "(key d [nb], key q [nb, 32], value d [nb], value q [nb, 32]) (test surface).");
    m.def(
        "quantize_kv_q4",
        [](const F32Array& x, int64_t j) {
            return quantize_kv(x, j, qe::store_key_q4, qe::store_value_q4, "quantize_kv_q4");
        },
        py::arg("x"), py::arg("j") = 0,
        "x as position j of the 4-bit KV cache, read back as quantize_kv_q8 (codes -7..7).");
    m.def("matmul_q8a", &matmul_q8a, py::arg("format"), py::arg("data"), py::arg("rows"),
          py::arg("k"), py::arg("x"), py::arg("isa") = "",
          "x [m, k] @ W.T for a packed W given as bytes, activations as q8a (test surface).");
    m.def("dequantize", &dequantize, py::arg("format"), py::arg("data"), py::arg("rows"),
          py::arg("k"), py::arg("isa") = "", "A packed matrix as float32 [rows, k].");
    m.def("quantize_into", &quantize_into, py::arg("format"), py::arg("x"), py::arg("rows"),
          py::arg("row0"), py::arg("out"), py::arg("threads") = 1, py::arg("isa") = "",
          py::arg("importance") = py::none(),
          "Quantizes rows [row0, row0 + len(x)) of a packed [rows, k] tensor into `out` (the "
          "tensor's bytes) with the quantizer variant `isa` (default: the best), the searches "
          "weighted by `importance` [k] when given; False if x holds NaN or infinity.");
    m.def(
        "quantizer_isas",
        [] {
            int n = 0;
            const char* const* isas = qe::quantizer_isas(&n);
            return std::vector<std::string>(isas, isas + n);
        },
        "The export quantizer's variants this build and CPU run, best first.");
    m.def("open_model_file", &open_model_file, py::arg("path"), py::arg("verify") = false,
          "Validates a model file with the native reader: {header, file_size, tensors}.");
    m.def("packed_size", &packed_size, py::arg("format"), py::arg("rows"), py::arg("k"),
          "Bytes of a packed [rows, k] tensor in `format`.");
    m.def(
        "table_slots",
        [](const std::string& isa) {
            const auto& t = table_for(isa);
            py::dict slots;
            for (int i = 0; i < qe::kKernelSlots; ++i)
                slots[qe::kernel_slot_name(i)] = qe::kernel_slot(t, i) != nullptr;
            return slots;
        },
        py::arg("isa"), "Family name -> whether the table `isa` sets that slot (always True).");
    qe_py::bind_kernels(m);
    qe_py::bind_model(m);
}
