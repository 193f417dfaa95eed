#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("attention", &attention, "fused integer attention", py::call_guard<py::gil_scoped_release>());
  mod.def("pack_weight", &pack_weight, "int8 weights [N, K] packed for linear");
  mod.def("linear", &linear, "int8 linear layer with a fused requantizing epilogue",
          py::call_guard<py::gil_scoped_release>());
  mod.def("layernorm", &layernorm, "integer-only LayerNorm", py::call_guard<py::gil_scoped_release>());
}
