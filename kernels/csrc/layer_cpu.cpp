// One encoder layer of the integer engine (ibert.engine.IntegerLayer.forward) in one call: the kernels of
// gemm_cpu.cpp, attention_cpu.cpp and layernorm_cpu.cpp in the layer's order, with no Python between them.
// (Between separate calls Python ran with caches that the weights had just swept: 6-8% of a forward.)
#include "checks.h"
#include "ops.h"

#include <ATen/record_function.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

namespace {

// The layer's integer buffers, in the order of the op's `buffers` list (kernels.layer orders a dict of them by
// these names). Every bias is [N] int32, every (m, e) int32 [1] or [N] as the kernel that reads it allows.
constexpr std::array<const char*, 30> kBufferNames = {
    "qkv.bias", "qkv.m", "qkv.e", "context.m", "context.e", "softmax.params",
    "attention_output.bias", "attention_output.m", "attention_output.e", "attention_residual.m",
    "attention_residual.e", "attention_layernorm.eps", "attention_layernorm.m", "attention_layernorm.e",
    "attention_layernorm.beta", "ffn_in.bias", "ffn_in.m", "ffn_in.e", "gelu.params", "gelu_output.m",
    "gelu_output.e", "ffn_out.bias", "ffn_out.m", "ffn_out.e", "ffn_residual.m", "ffn_residual.e",
    "ffn_layernorm.eps", "ffn_layernorm.m", "ffn_layernorm.e", "ffn_layernorm.beta"};

// The linear kernel reads activations four at a time: a [M, K] padded with zeros to a multiple of 4 columns.
torch::Tensor pad4(const torch::Tensor& a) {
  const int64_t rest = a.size(1) % 4;
  return rest ? at::constant_pad_nd(a, {0, 4 - rest}) : a;
}

// The buffers by name.
struct Buffers {
  at::TensorList w;
  const torch::Tensor& operator[](const std::string& name) const {
    for (size_t i = 0; i < kBufferNames.size(); ++i)
      if (name == kBufferNames[i]) return w[i];
    C10_THROW_ERROR(ValueError, "encoder_layer: no buffer named " + name);
  }
};

// Every buffer and packed weight, by name, before any kernel runs (the kernels check them again, but only as
// they come to them).
void check_buffers(const Buffers& buf, at::TensorList packed, int64_t H) {
  constexpr const char* op = "encoder_layer";
  ibert::check_tensor(op, "ffn_in.bias", buf["ffn_in.bias"], torch::kInt32, 1);
  const int64_t I = buf["ffn_in.bias"].size(0);
  const auto multiplier = [&](const std::string& p, int64_t n) {
    ibert::check_multiplier(op, (p + ".m, " + p + ".e").c_str(), buf[p + ".m"], buf[p + ".e"], n);
  };
  const std::array<std::tuple<std::string, int64_t, int64_t>, 4> linears = {
      {{"qkv", 3 * H, H}, {"attention_output", H, H}, {"ffn_in", I, H}, {"ffn_out", H, I}}};
  for (size_t i = 0; i < linears.size(); ++i) {
    const auto& [p, N, K] = linears[i];
    ibert::check_packed(op, (p + "'s packed weight").c_str(), packed[i], N, K);
    ibert::check_shape(op, (p + ".bias").c_str(), buf[p + ".bias"], torch::kInt32, {N});
    multiplier(p, N);
  }
  multiplier("context", 1);
  multiplier("gelu_output", I);  // [1], or [I] (smoothquant_gelu)
  for (const char* p : {"attention_residual", "ffn_residual"}) multiplier(p, H);  // [1], or [H] (smoothquant)
  for (const std::string p : {"attention_layernorm", "ffn_layernorm"}) {
    ibert::check_shape(op, (p + ".eps").c_str(), buf[p + ".eps"], torch::kInt64, {1});
    ibert::check_shape(op, (p + ".m").c_str(), buf[p + ".m"], torch::kInt32, {H});
    multiplier(p, H);
    ibert::check_shape(op, (p + ".beta").c_str(), buf[p + ".beta"], torch::kInt64, {H});
  }
  ibert::check_softmax_params(op, "softmax.params", buf["softmax.params"]);
  ibert::check_gelu_params(op, "gelu.params", buf["gelu.params"]);
}

// f() as a range named `stage` in the torch profiler (nothing when it is off); an error in it says which stage of
// the layer, and which buffers, it came from.
template <class F>
auto stage(const char* name, const char* buffers, F f) {
  RECORD_FUNCTION(name, std::vector<c10::IValue>());
  try {
    return f();
  } catch (c10::Error& err) {
    err.add_context(std::string("in encoder_layer, ") + name + " (buffers " + buffers + ")");
    throw;
  }
}

}  // namespace

std::vector<std::string> layer_buffer_names() { return {kBufferNames.begin(), kBufferNames.end()}; }

// x: [B, S, H] int8; mask: [B, S] int32 additive; head_mask: [heads] uint8 or empty; packed: the four linear
// layers' weights from pack_weight (QKV, attention output, FFN in, FFN out); w: the rest of the layer's buffers in
// the order of kBufferNames. Returns [B, S, H] int8 and the attention probabilities [B, heads, S, S] uint8 (empty
// unless asked). The CPU kernel of the op ibert::encoder_layer_cpp (its schema is defined in kernels/layer.py):
// dispatched in C++, without a Python call of its own.
std::tuple<torch::Tensor, torch::Tensor> encoder_layer(const torch::Tensor& x, const torch::Tensor& mask,
                                                       const torch::Tensor& head_mask, at::TensorList packed,
                                                       at::TensorList w, int64_t heads, int64_t bits, int64_t ln_bits,
                                                       int64_t gelu_input_bits, int64_t softmax_bits, bool want_probs) {
  constexpr const char* op = "encoder_layer";
  ibert::check_tensor(op, "x", x, torch::kInt8, 3);
  TORCH_CHECK_VALUE(packed.size() == 4 && w.size() == kBufferNames.size(), "encoder_layer: expected 4 weights and ",
                    kBufferNames.size(), " buffers (layer_buffer_names()), got ", packed.size(), " and ", w.size());
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2);
  ibert::check_range(op, "bits", bits, 2, 8);
  ibert::check_range(op, "gelu_input_bits", gelu_input_bits, 2, 16);
  // the residual sums are LayerNorm's input: within its exact domain for rows of H
  ibert::check_range(op, "ln_bits", ln_bits, 2, 32);
  TORCH_CHECK_VALUE(ibert::qmax_of(ln_bits) < ibert::layernorm_max_input(H), "encoder_layer: ln_bits = ", ln_bits,
                    " exceeds i-LayerNorm's exact domain for rows of ", H);
  const Buffers buf{w};
  check_buffers(buf, packed, H);
  if (mask.numel()) ibert::check_shape(op, "mask", mask, torch::kInt32, {B, S});
  ibert::require_simd(op, ibert::Isa::kAvx2);
  const auto none = torch::empty({0}, x.options().dtype(torch::kInt32));
  const auto no_gelu = torch::empty({0}, x.options().dtype(torch::kInt64));
  const auto x2 = x.reshape({B * S, H});
  const auto qkv = stage("linear (QKV)", "qkv.*", [&] {
    return linear(pad4(x2), packed[0], buf["qkv.bias"].size(0), buf["qkv.bias"], buf["qkv.m"], buf["qkv.e"],
                  ibert::qmax_of(bits), none, none, none, no_gelu, none, none, bits, {});
  });
  const auto attn = stage("attention", "context.*, softmax.params", [&] {
    return attention(qkv, mask, buf["softmax.params"], buf["context.m"], buf["context.e"], head_mask, B, heads,
                     softmax_bits, ibert::qmax_of(bits), want_probs);
  });
  const auto y = stage("linear (attention output, residual)", "attention_output.*, attention_residual.*", [&] {
    return linear(pad4(attn[0]), packed[1], H, buf["attention_output.bias"], buf["attention_output.m"],
                  buf["attention_output.e"], ibert::qmax_of(ln_bits), x2, buf["attention_residual.m"],
                  buf["attention_residual.e"], no_gelu, none, none, ln_bits, {});
  });
  const auto a = stage("layernorm", "attention_layernorm.*", [&] {
    return layernorm(y, buf["attention_layernorm.eps"], buf["attention_layernorm.m"], buf["attention_layernorm.e"],
                     buf["attention_layernorm.beta"], bits);
  });
  const auto g = stage("linear (FFN in, i-GELU)", "ffn_in.*, gelu.params, gelu_output.*", [&] {
    return linear(pad4(a), packed[2], buf["ffn_in.bias"].size(0), buf["ffn_in.bias"], buf["ffn_in.m"],
                  buf["ffn_in.e"], ibert::qmax_of(gelu_input_bits), none, none, none, buf["gelu.params"],
                  buf["gelu_output.m"], buf["gelu_output.e"], bits, {});
  });
  const auto y2 = stage("linear (FFN out, residual)", "ffn_out.*, ffn_residual.*", [&] {
    return linear(pad4(g), packed[3], H, buf["ffn_out.bias"], buf["ffn_out.m"], buf["ffn_out.e"],
                  ibert::qmax_of(ln_bits), a, buf["ffn_residual.m"], buf["ffn_residual.e"], no_gelu, none, none,
                  ln_bits, {});
  });
  const auto out = stage("layernorm", "ffn_layernorm.*", [&] {
    return layernorm(y2, buf["ffn_layernorm.eps"], buf["ffn_layernorm.m"], buf["ffn_layernorm.e"],
                     buf["ffn_layernorm.beta"], bits);
  });
  return {out.view({B, S, H}), attn[1]};
}

TORCH_LIBRARY_IMPL(ibert, CPU, m) { m.impl("encoder_layer_cpp", &encoder_layer); }
