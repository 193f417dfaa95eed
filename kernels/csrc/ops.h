// The CPU kernels (x86: AVX-512 VNNI or AVX2) that kernels._cpu builds into one extension module. Each checks its
// arguments (checks.h) before it runs.
#pragma once
#include <torch/extension.h>

#include <string>
#include <vector>

// attention_cpu.cpp
std::vector<torch::Tensor> attention(torch::Tensor qkv, torch::Tensor mask, torch::Tensor params, torch::Tensor m_t,
                                     torch::Tensor e_t, torch::Tensor head_mask, int64_t batch, int64_t heads,
                                     int64_t softmax_bits, int64_t qmax, bool want_probs);

// gemm_cpu.cpp
torch::Tensor pack_weight(torch::Tensor w);
torch::Tensor linear(torch::Tensor a, torch::Tensor packed, int64_t N, torch::Tensor bias, torch::Tensor m,
                     torch::Tensor e, int64_t qmax, torch::Tensor residual, torch::Tensor m_res, torch::Tensor e_res,
                     torch::Tensor gelu, torch::Tensor m2, torch::Tensor e2, int64_t out_bits);

// layernorm_cpu.cpp
torch::Tensor layernorm(torch::Tensor x, torch::Tensor eps_t, torch::Tensor m_t, torch::Tensor e_t,
                        torch::Tensor beta_t, int64_t out_bits);

// layer_cpu.cpp (the op itself is registered as ibert::encoder_layer_cpp)
std::vector<std::string> layer_buffer_names();
