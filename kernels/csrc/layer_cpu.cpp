// One encoder layer of the integer engine (ibert.engine.IntegerLayer.forward) in one call: the kernels of
// gemm_cpu.cpp, attention_cpu.cpp and layernorm_cpu.cpp in the layer's order, with no Python between them.
// (Between separate calls Python ran with caches that the weights had just swept: 6-8% of a forward.)
#include "ops.h"

#include <ATen/record_function.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

namespace {

int64_t qmax_of(int64_t bits) { return (int64_t(1) << (bits - 1)) - 1; }

// The linear kernel reads activations four at a time: a [M, K] padded with zeros to a multiple of 4 columns.
torch::Tensor pad4(const torch::Tensor& a) {
  const int64_t rest = a.size(1) % 4;
  return rest ? at::constant_pad_nd(a, {0, 4 - rest}) : a;
}

// f() as a range named `name` in the torch profiler (nothing when it is off).
template <class F>
auto scope(const char* name, F f) {
  RECORD_FUNCTION(name, std::vector<c10::IValue>());
  return f();
}

// Reads the buffers in their order.
struct Operands {
  at::TensorList w;
  size_t i = 0;
  const torch::Tensor& operator()() { return w.at(i++); }
};

}  // namespace

// x: [B, S, H] int8; mask: [B, S] int32 additive; head_mask: [heads] uint8 or empty; packed: the four linear
// layers' weights from pack_weight (QKV, attention output, FFN in, FFN out); w: the rest of the layer's buffers in
// order: QKV (bias, m, e), context (m, e), softmax params, attention output (bias, m, e), its residual (m, e),
// LayerNorm (eps, m, e, beta), FFN in (bias, m, e), i-GELU params [5], i-GELU output (m, e), FFN out (bias, m, e),
// its residual (m, e), LayerNorm (eps, m, e, beta); every bias [N] int32. Returns [B, S, H] int8 and the attention
// probabilities [B, heads, S, S] uint8 (empty unless asked). The CPU kernel of the op ibert::encoder_layer_cpp
// (its schema is defined in kernels/layer.py): dispatched in C++, without a Python call of its own.
std::tuple<torch::Tensor, torch::Tensor> encoder_layer(const torch::Tensor& x, const torch::Tensor& mask,
                                                       const torch::Tensor& head_mask, at::TensorList packed,
                                                       at::TensorList w, int64_t heads, int64_t bits, int64_t ln_bits,
                                                       int64_t gelu_input_bits, int64_t softmax_bits, bool want_probs) {
  TORCH_CHECK(packed.size() == 4 && w.size() == 30, "encoder_layer: expected 4 weights and 30 buffers, got ",
              packed.size(), " and ", w.size());
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2);
  const auto none = torch::empty({0}, x.options().dtype(torch::kInt32));
  const auto no_gelu = torch::empty({0}, x.options().dtype(torch::kInt64));
  Operands next{w};
  const auto x2 = x.reshape({B * S, H});

  const auto &qkv_b = next(), &qkv_m = next(), &qkv_e = next();
  const auto qkv = scope("linear (QKV)", [&] {
    return linear(pad4(x2), packed[0], qkv_b.size(0), qkv_b, qkv_m, qkv_e, qmax_of(bits), none, none, none, no_gelu,
                  none, none, bits);
  });
  const auto &ctx_m = next(), &ctx_e = next(), &softmax = next();
  const auto attn = scope("attention", [&] {
    return attention(qkv, mask, softmax, ctx_m, ctx_e, head_mask, B, heads, softmax_bits, qmax_of(bits), want_probs);
  });

  const auto &dense_b = next(), &dense_m = next(), &dense_e = next(), &res_m = next(), &res_e = next();
  const auto y = scope("linear (attention output, residual)", [&] {
    return linear(pad4(attn[0]), packed[1], H, dense_b, dense_m, dense_e, qmax_of(ln_bits), x2, res_m, res_e,
                  no_gelu, none, none, ln_bits);
  });
  const auto &ln_eps = next(), &ln_m = next(), &ln_e = next(), &ln_beta = next();
  const auto a = scope("layernorm", [&] { return layernorm(y, ln_eps, ln_m, ln_e, ln_beta, bits); });

  const auto &in_b = next(), &in_m = next(), &in_e = next(), &gelu = next(), &gelu_m = next(), &gelu_e = next();
  const auto g = scope("linear (FFN in, i-GELU)", [&] {
    return linear(pad4(a), packed[2], in_b.size(0), in_b, in_m, in_e, qmax_of(gelu_input_bits), none, none, none,
                  gelu, gelu_m, gelu_e, bits);
  });

  const auto &out_b = next(), &out_m = next(), &out_e = next(), &res2_m = next(), &res2_e = next();
  const auto y2 = scope("linear (FFN out, residual)", [&] {
    return linear(pad4(g), packed[3], H, out_b, out_m, out_e, qmax_of(ln_bits), a, res2_m, res2_e, no_gelu, none,
                  none, ln_bits);
  });
  const auto &ln2_eps = next(), &ln2_m = next(), &ln2_e = next(), &ln2_beta = next();
  const auto out = scope("layernorm", [&] { return layernorm(y2, ln2_eps, ln2_m, ln2_e, ln2_beta, bits); });
  return {out.view({B, S, H}), attn[1]};
}

TORCH_LIBRARY_IMPL(ibert, CPU, m) { m.impl("encoder_layer_cpp", &encoder_layer); }
