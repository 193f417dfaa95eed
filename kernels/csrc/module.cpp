#include "checks.h"
#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  using py::arg;
  mod.def("attention", &attention, "fused integer attention", arg("qkv"), arg("mask"), arg("params"), arg("m_t"),
          arg("e_t"), arg("head_mask"), arg("batch"), arg("heads"), arg("softmax_bits"), arg("qmax"),
          arg("want_probs"), py::call_guard<py::gil_scoped_release>());
  mod.def("pack_weight", &pack_weight, "int8 weights [N, K] packed for linear", arg("w"));
  mod.def("linear", &linear, "int8 linear layer with a fused requantizing epilogue", arg("a"), arg("packed"),
          arg("N"), arg("bias"), arg("m"), arg("e"), arg("qmax"), arg("residual"), arg("m_res"), arg("e_res"),
          arg("gelu"), arg("m2"), arg("e2"), arg("out_bits"), arg("blocking") = std::vector<int64_t>{},
          py::call_guard<py::gil_scoped_release>());
  mod.def("set_linear_blocking", &set_linear_blocking, "replace one ISA's tuned linear blockings", arg("isa"),
          arg("entries"));
  mod.def("linear_blocking", &linear_blocking, "the blocking linear takes for [M, K] x [N, K] here", arg("M"),
          arg("N"), arg("K"));
  mod.def("amx_tile_loop", &amx_tile_loop, "a register-only tdpbssd loop on every thread; its multiply-adds",
          arg("steps"), py::call_guard<py::gil_scoped_release>());
  mod.def("layernorm", &layernorm, "integer-only LayerNorm", arg("x"), arg("eps_t"), arg("m_t"), arg("e_t"),
          arg("beta_t"), arg("out_bits"), py::call_guard<py::gil_scoped_release>());
  mod.def("isa", [] { return std::string(ibert::isa_name(ibert::simd_isa())); },
          "the instruction set the kernels run on: amx_int8, avx512_vnni, avx2 or none (IBERT_CPU_ISA forces one)");
  mod.def("isas", &ibert::available_isas, "the instruction sets this CPU can run, best first (for IBERT_CPU_ISA)");
  mod.def("layer_buffer_names", &layer_buffer_names, "the names of ibert::encoder_layer_cpp's buffers, in order");
}
