// Integer-only LayerNorm for x86 CPUs, one row at a time: exactly kernels.layernorm.layernorm_reference.
// The loops over a row are int64 arithmetic that the compiler vectorizes (AVX-512: vpmullq, vpsravq).
#include "ops.h"

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int kNormBits = 16;  // kernels.layernorm.NORM_BITS
constexpr int kVarBits = 15;   // VAR_BITS
constexpr int kMinShift = kNormBits - 30;
constexpr int kNewtonSteps = 6;

inline int bit_length(uint64_t v) { return v ? 64 - __builtin_clzll(v) : 0; }

// floor(sqrt(n)) for 1 <= n < 2**62, Newton's method from a power of two above the root (isqrt_reference).
inline int64_t isqrt(int64_t n) {
  int64_t x = int64_t(1) << ((bit_length(n) + 1) >> 1);
  for (int i = 0; i < kNewtonSteps; ++i) x = std::min(x, (x + n / x) >> 1);
  return x;
}

template <typename Out>
void normalize_row(const int32_t* __restrict x, int64_t N, int64_t eps, const int64_t* __restrict m,
                   const int64_t* __restrict e, const int64_t* __restrict beta_half, int64_t qmax, int64_t* __restrict y,
                   Out* __restrict out) {
  int64_t sum = 0;
  for (int64_t j = 0; j < N; ++j) sum += x[j];
  int64_t amax = 0;
  for (int64_t j = 0; j < N; ++j) {
    y[j] = (int64_t)x[j] * N - sum;
    amax = std::max(amax, y[j] < 0 ? -y[j] : y[j]);
  }
  const int sh = std::max(bit_length(amax) - kVarBits, kMinShift);
  int64_t ssq = 0;
  if (sh >= 0) {
    for (int64_t j = 0; j < N; ++j) ssq += (y[j] >> sh) * (y[j] >> sh);
  } else {
    for (int64_t j = 0; j < N; ++j) ssq += (y[j] << -sh) * (y[j] << -sh);
  }
  const int64_t eps_row = sh >= 0 ? eps >> std::min(2 * sh, 62) : std::min(eps, (int64_t(1) << 61) >> -2 * sh) << -2 * sh;
  const int64_t inv = (int64_t(1) << 30) / isqrt(std::max<int64_t>(ssq / N + eps_row, 1));
  const int shift = sh + 30 - kNormBits;
  for (int64_t j = 0; j < N; ++j) {
    const int64_t v = (((y[j] * inv) >> shift) * m[j] + beta_half[j]) >> e[j];
    out[j] = (Out)std::min(std::max(v, -qmax), qmax);
  }
}

}  // namespace

// x: [R, N] int32; eps: [1] int64; m, e: [N] int32; beta: [N] int64 (layernorm_params). Returns [R, N] on out_bits
// bits (int8 for <= 8, else int32).
torch::Tensor layernorm(torch::Tensor x, torch::Tensor eps_t, torch::Tensor m_t, torch::Tensor e_t,
                        torch::Tensor beta_t, int64_t out_bits) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "layernorm: x must be a contiguous [R, N]");
  const int64_t R = x.size(0), N = x.size(1), eps = eps_t.data_ptr<int64_t>()[0];
  const int64_t qmax = (int64_t(1) << (out_bits - 1)) - 1;
  auto out = torch::empty({R, N}, x.options().dtype(out_bits <= 8 ? torch::kInt8 : torch::kInt32));
  std::vector<int64_t> m(N), e(N), beta_half(N);
  for (int64_t j = 0; j < N; ++j) {
    m[j] = m_t.data_ptr<int32_t>()[j];
    e[j] = e_t.data_ptr<int32_t>()[j];
    beta_half[j] = beta_t.data_ptr<int64_t>()[j] + (e[j] > 0 ? int64_t(1) << (e[j] - 1) : 0);
  }
  const int32_t* src = x.data_ptr<int32_t>();
  void* dst = out.data_ptr();
  const bool int8_out = out_bits <= 8;
  at::parallel_for(0, R, 16, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> y(N);
    for (int64_t r = begin; r < end; ++r) {
      if (int8_out) {
        normalize_row(src + r * N, N, eps, m.data(), e.data(), beta_half.data(), qmax, y.data(),
                      static_cast<int8_t*>(dst) + r * N);
      } else {
        normalize_row(src + r * N, N, eps, m.data(), e.data(), beta_half.data(), qmax, y.data(),
                      static_cast<int32_t*>(dst) + r * N);
      }
    }
  });
  return out;
}
