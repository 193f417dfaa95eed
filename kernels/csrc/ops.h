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
                     torch::Tensor gelu, torch::Tensor m2, torch::Tensor e2, int64_t out_bits,
                     std::vector<int64_t> blocking);
// Replaces the tuned blockings of one ISA: entries [M, N, K, rows, tiles, panel_major].
void set_linear_blocking(const std::string& isa, const std::vector<std::vector<int64_t>>& entries);
// The blocking linear() takes for this shape on the ISA it runs on: [rows, tiles, panel_major].
std::vector<int64_t> linear_blocking(int64_t M, int64_t N, int64_t K);
// A register-only tdpbssd loop of `steps` x 4 products on each of this process's threads (the AMX tiles' peak);
// returns the int8 multiply-adds done.
int64_t amx_tile_loop(int64_t steps);

// layernorm_cpu.cpp
torch::Tensor layernorm(torch::Tensor x, torch::Tensor eps_t, torch::Tensor m_t, torch::Tensor e_t,
                        torch::Tensor beta_t, int64_t out_bits);

// layer_cpu.cpp (the op itself is registered as ibert::encoder_layer_cpp)
std::vector<std::string> layer_buffer_names();
