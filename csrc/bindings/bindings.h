// SPDX-License-Identifier: Apache-2.0
// Parts of the _core module defined in their own files (module.cc calls them).
#pragma once

#include <pybind11/pybind11.h>

namespace qe_py {

// Every kernel family callable on one kernel table by tag (the Python test surface).
void bind_kernels(pybind11::module_& m);
// The model and its state (used by qwen_edge/backends/native.py).
void bind_model(pybind11::module_& m);

}  // namespace qe_py
