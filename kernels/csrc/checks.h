// Argument checks of the C++ ops. The ops are public (this module's functions and torch.ops.ibert.*), so every
// shape, dtype, device and value domain is checked before a kernel runs, each error naming the op and the
// argument; then the CPU. Dtype errors raise TypeError, shape and value errors ValueError, a missing CPU feature
// RuntimeError.
#pragma once
#include <torch/extension.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ibert {

int64_t qmax_of(int64_t bits);

// The bound on |x| within which i-LayerNorm of rows of n is exact: kernels.layernorm.max_input.
int64_t layernorm_max_input(int64_t n);

// t: a contiguous CPU tensor of `dtype` with `dim` dimensions.
void check_tensor(const char* op, const char* name, const torch::Tensor& t, c10::ScalarType dtype, int64_t dim);

// t: as check_tensor, of the given sizes.
void check_shape(const char* op, const char* name, const torch::Tensor& t, c10::ScalarType dtype,
                 c10::IntArrayRef sizes);

// A dyadic multiplier m * 2**-e: int32 [1] or [n] each (n = 1: [1] only), every shift in [0, 62].
void check_multiplier(const char* op, const char* name, const torch::Tensor& m, const torch::Tensor& e, int64_t n);

void check_range(const char* op, const char* name, int64_t value, int64_t lo, int64_t hi);

// pack_weight's layout of an [N, K] int8 weight.
void check_packed(const char* op, const char* name, const torch::Tensor& packed, int64_t N, int64_t K);

// int64 [5] in the domain of softmax_params' constants (x0 < 0 divides; every shift below 32).
void check_softmax_params(const char* op, const char* name, const torch::Tensor& params);

// int64 [5] i-GELU constants (gelu_params) that fit int32, with shifts below 32.
void check_gelu_params(const char* op, const char* name, const torch::Tensor& params);

// The instruction sets the kernels are compiled for (simd.h), in order; every op has a kernel for each (on
// kAmxInt8, the ops without a tile kernel run their AVX-512 VNNI one).
enum class Isa { kNone, kAvx2, kAvx512Vnni, kAmxInt8 };

const char* isa_name(Isa isa);

// The Isa of that name ("amx_int8", "avx512_vnni", "avx2", "none"); a ValueError naming `what` otherwise.
Isa isa_named(const char* what, const std::string& name);

// The best of them this CPU has (AMX also needs Linux's permission to use tiles, which the first call requests),
// or the one the environment variable IBERT_CPU_ISA names for A/B runs: an error if the CPU lacks it or the name is
// unknown.
Isa simd_isa();

// The names of the instruction sets this CPU (and OS) can run, best first: what IBERT_CPU_ISA may name.
std::vector<std::string> available_isas();

// simd_isa(), or an error unless it is at least `need`, naming the CPU features missing.
Isa require_simd(const char* op, Isa need);

}  // namespace ibert
