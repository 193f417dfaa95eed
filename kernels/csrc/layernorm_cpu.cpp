// Integer-only LayerNorm for x86 CPUs with AVX-512 or AVX2, one row at a time: exactly
// kernels.layernorm.layernorm_reference, in int64 lanes (products wrap as torch's do).
#include "checks.h"
#include "ops.h"
#include "simd.h"

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

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

// The row's shift of y = N x - sum before squaring (|y >> sh| < 2**15), and eps on the same scale.
inline int variance_shift(int64_t amax) { return std::max(bit_length(amax) - kVarBits, kMinShift); }

inline int64_t eps_of_row(int64_t eps, int sh) {
  return sh >= 0 ? eps >> std::min(2 * sh, 62) : std::min(eps, (int64_t(1) << 61) >> -2 * sh) << -2 * sh;
}

IBERT_SIMD_BEGIN

inline __mmask8 lanes(int64_t left) { return left >= 8 ? 0xff : left <= 0 ? 0 : (__mmask8)((1u << left) - 1); }

// One row, eight int64 lanes at a time; an error if |x| reaches `bound`. y: scratch [N + 16] int64.
template <bool kInt8Out>
void normalize_row(const int32_t* __restrict x, int64_t N, int64_t bound, int64_t eps, const int64_t* __restrict m,
                   const int64_t* __restrict e, const int64_t* __restrict beta_half, int64_t qmax, int64_t* __restrict y,
                   void* __restrict out) {
  __m512i acc = _mm512_setzero_si512();
  __m256i amax_x = _mm256_setzero_si256();
  for (int64_t j = 0; j < N; j += 8) {
    const __m256i v = _mm256_maskz_loadu_epi32(lanes(N - j), x + j);
    acc = _mm512_add_epi64(acc, _mm512_cvtepi32_epi64(v));
    amax_x = _mm256_max_epu32(amax_x, _mm256_abs_epi32(v));  // |INT32_MIN| is 2**31 as unsigned
  }
  alignas(32) uint32_t top[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(top), amax_x);
  TORCH_CHECK_VALUE(*std::max_element(top, top + 8) < uint64_t(bound), "layernorm: |x| must be below ", bound,
                    " for rows of ", N, " (exact in int64), got ", *std::max_element(top, top + 8));
  const __m512i sum = _mm512_set1_epi64(_mm512_reduce_add_epi64(acc)), n = _mm512_set1_epi64(N);
  __m512i amax = _mm512_setzero_si512();
  for (int64_t j = 0; j < N; j += 8) {  // y = N x - sum (0 past the row's end)
    const __mmask8 k = lanes(N - j);
    const __m512i v = _mm512_maskz_sub_epi64(
        k, _mm512_mul_epi32(_mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(k, x + j)), n), sum);
    _mm512_storeu_si512(y + j, v);
    amax = _mm512_max_epi64(amax, _mm512_abs_epi64(v));
  }
  const int sh = variance_shift(_mm512_reduce_max_epi64(amax));
  const __m512i down = _mm512_set1_epi64(std::max(sh, 0)), up = _mm512_set1_epi64(std::max(-sh, 0));
  acc = _mm512_setzero_si512();
  for (int64_t j = 0; j < N; j += 8) {  // |ys| < 2**15: an int32 product is exact
    const __m512i ys = _mm512_sllv_epi64(_mm512_srav_epi64(_mm512_loadu_si512(y + j), down), up);
    acc = _mm512_add_epi64(acc, _mm512_mul_epi32(ys, ys));
  }
  const int64_t var = _mm512_reduce_add_epi64(acc) / N;
  const __m512i inv = _mm512_set1_epi64((int64_t(1) << 30) / isqrt(std::max<int64_t>(var + eps_of_row(eps, sh), 1)));
  const __m512i shift = _mm512_set1_epi64(sh + 30 - kNormBits), lo = _mm512_set1_epi64(-qmax), hi = _mm512_set1_epi64(qmax);
  const auto finish = [&](int64_t j) {  // eight output lanes from y[j ...], as int64
    const __mmask8 k = lanes(N - j);
    const __m512i norm = _mm512_srav_epi64(_mm512_mullo_epi64(_mm512_loadu_si512(y + j), inv), shift);
    const __m512i v = _mm512_add_epi64(_mm512_mullo_epi64(norm, _mm512_maskz_loadu_epi64(k, m + j)),
                                       _mm512_maskz_loadu_epi64(k, beta_half + j));
    return _mm512_min_epi64(_mm512_max_epi64(_mm512_srav_epi64(v, _mm512_maskz_loadu_epi64(k, e + j)), lo), hi);
  };
  for (int64_t j = 0; j < N; j += 16) {  // narrowed in registers: masked vpmov* stores to memory are slow
    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(finish(j))),
                                         _mm512_cvtepi64_epi32(finish(j + 8)), 1);
    const __mmask16 k = below(j, N);
    if constexpr (kInt8Out) {
      _mm_mask_storeu_epi8(static_cast<int8_t*>(out) + j, k, _mm512_cvtepi32_epi8(v));
    } else {
      _mm512_mask_storeu_epi32(static_cast<int32_t*>(out) + j, k, v);
    }
  }
}

IBERT_SIMD_END

}  // namespace

namespace avx2 {  // beside simd.h's AVX2 helpers

IBERT_AVX2_BEGIN

// The int64 lane operations AVX2 lacks: arithmetic shifts (as rshift_round), |v|, max and the wrapping product.
inline __m256i sra64(__m256i v, __m256i e) {
  const __m256i top = _mm256_set1_epi64x(INT64_MIN);
  return _mm256_sub_epi64(_mm256_srlv_epi64(_mm256_xor_si256(v, top), e), _mm256_srlv_epi64(top, e));
}
inline __m256i abs64(__m256i v) {
  return _mm256_blendv_epi8(v, _mm256_sub_epi64(_mm256_setzero_si256(), v), _mm256_cmpgt_epi64(_mm256_setzero_si256(), v));
}
inline __m256i max64(__m256i a, __m256i b) { return _mm256_blendv_epi8(b, a, _mm256_cmpgt_epi64(a, b)); }
inline __m256i mullo64(__m256i a, __m256i b) {  // a b mod 2**64 = al bl + (ah bl + al bh) 2**32
  const __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), b),
                                         _mm256_mul_epu32(a, _mm256_srli_epi64(b, 32)));
  return _mm256_add_epi64(_mm256_mul_epu32(a, b), _mm256_slli_epi64(cross, 32));
}
inline int64_t reduce_add64(__m256i v) {
  const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
}

// Four int32 of x from j (0 past N) as int64 lanes.
inline __m256i load4(const int32_t* x, int64_t j, int64_t N) {
  alignas(16) int32_t t[4] = {};
  std::memcpy(t, x + j, 4 * std::min<int64_t>(4, N - j));
  return _mm256_cvtepi32_epi64(_mm_load_si128(reinterpret_cast<const __m128i*>(t)));
}

// As the AVX-512 normalize_row, four int64 lanes at a time.
template <bool kInt8Out>
void normalize_row(const int32_t* __restrict x, int64_t N, int64_t bound, int64_t eps, const int64_t* __restrict m,
                   const int64_t* __restrict e, const int64_t* __restrict beta_half, int64_t qmax, int64_t* __restrict y,
                   void* __restrict out) {
  __m256i acc = _mm256_setzero_si256(), amax_x = _mm256_setzero_si256();
  for (int64_t j = 0; j < N; j += 8) {
    const __m256i v = load8(x + j, std::min<int64_t>(8, N - j));
    acc = _mm256_add_epi64(acc, _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)),
                                                 _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1))));
    amax_x = _mm256_max_epu32(amax_x, _mm256_abs_epi32(v));  // |INT32_MIN| is 2**31 as unsigned
  }
  alignas(32) uint32_t top[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(top), amax_x);
  TORCH_CHECK_VALUE(*std::max_element(top, top + 8) < uint64_t(bound), "layernorm: |x| must be below ", bound,
                    " for rows of ", N, " (exact in int64), got ", *std::max_element(top, top + 8));
  const __m256i sum = _mm256_set1_epi64x(reduce_add64(acc)), n = _mm256_set1_epi64x(N);
  __m256i amax = _mm256_setzero_si256();
  for (int64_t j = 0; j < N; j += 4) {  // y = N x - sum (0 past the row's end)
    const __m256i keep = _mm256_cmpgt_epi64(_mm256_set1_epi64x(N - j), _mm256_setr_epi64x(0, 1, 2, 3));
    const __m256i v = _mm256_and_si256(_mm256_sub_epi64(_mm256_mul_epi32(load4(x, j, N), n), sum), keep);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + j), v);
    amax = max64(amax, abs64(v));
  }
  alignas(32) int64_t tops[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(tops), amax);
  const int sh = variance_shift(*std::max_element(tops, tops + 4));
  const __m256i down = _mm256_set1_epi64x(std::max(sh, 0)), up = _mm256_set1_epi64x(std::max(-sh, 0));
  acc = _mm256_setzero_si256();
  for (int64_t j = 0; j < N; j += 4) {  // |ys| < 2**15: an int32 product is exact
    const __m256i ys = _mm256_sllv_epi64(sra64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(y + j)), down), up);
    acc = _mm256_add_epi64(acc, _mm256_mul_epi32(ys, ys));
  }
  const int64_t var = reduce_add64(acc) / N;
  const __m256i inv = _mm256_set1_epi64x((int64_t(1) << 30) / isqrt(std::max<int64_t>(var + eps_of_row(eps, sh), 1)));
  const __m256i shift = _mm256_set1_epi64x(sh + 30 - kNormBits);
  const __m256i lo = _mm256_set1_epi64x(-qmax), hi = _mm256_set1_epi64x(qmax);
  const __m256i evens = _mm256_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0);
  for (int64_t j = 0; j < N; j += 4) {
    const auto at = [&](const int64_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + j)); };
    const __m256i norm = sra64(mullo64(at(y), inv), shift);
    const __m256i v = clamp64(sra64(_mm256_add_epi64(mullo64(norm, at(m)), at(beta_half)), at(e)), lo, hi);
    const __m128i v32 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(v, evens));  // within int32 now
    const int64_t left = std::min<int64_t>(4, N - j);
    if constexpr (kInt8Out) {
      const int32_t bytes = _mm_cvtsi128_si32(_mm_shuffle_epi8(v32, _mm_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1,
                                                                                   -1, -1, -1, -1, -1, -1, -1)));
      std::memcpy(static_cast<int8_t*>(out) + j, &bytes, left);
    } else {
      alignas(16) int32_t t[4];
      _mm_store_si128(reinterpret_cast<__m128i*>(t), v32);
      std::memcpy(static_cast<int32_t*>(out) + j, t, 4 * left);
    }
  }
}

IBERT_AVX2_END

}  // namespace avx2

// x: [R, N] int32; eps: [1] int64; m, e: [N] int32; beta: [N] int64 (layernorm_params). Returns [R, N] on out_bits
// bits (int8 for <= 8, else int32).
torch::Tensor layernorm(torch::Tensor x, torch::Tensor eps_t, torch::Tensor m_t, torch::Tensor e_t,
                        torch::Tensor beta_t, int64_t out_bits) {
  constexpr const char* op = "layernorm";
  ibert::check_tensor(op, "x", x, torch::kInt32, 2);
  const int64_t R = x.size(0), N = x.size(1);
  ibert::check_range(op, "the row length", N, 1, 65535);
  ibert::check_shape(op, "eps", eps_t, torch::kInt64, {1});
  const int64_t eps = eps_t.data_ptr<int64_t>()[0];
  ibert::check_range(op, "eps", eps, 0, INT64_MAX);
  ibert::check_multiplier(op, "(m, e)", m_t, e_t, N);
  TORCH_CHECK_VALUE(m_t.numel() == N, "layernorm: m and e must have one element per channel (", N, "), got ",
                    m_t.numel());
  ibert::check_shape(op, "beta", beta_t, torch::kInt64, {N});
  ibert::check_range(op, "out_bits", out_bits, 2, 32);
  const ibert::Isa isa = ibert::require_simd(op, ibert::Isa::kAvx2);
  const int64_t qmax = ibert::qmax_of(out_bits), bound = ibert::layernorm_max_input(N);
  auto out = torch::empty({R, N}, x.options().dtype(out_bits <= 8 ? torch::kInt8 : torch::kInt32));
  std::vector<int64_t> m(N + 16), e(N + 16), beta_half(N + 16);
  for (int64_t j = 0; j < N; ++j) {
    m[j] = m_t.data_ptr<int32_t>()[j];
    e[j] = e_t.data_ptr<int32_t>()[j];
    beta_half[j] = beta_t.data_ptr<int64_t>()[j] + (e[j] > 0 ? int64_t(1) << (e[j] - 1) : 0);
  }
  const int32_t* src = x.data_ptr<int32_t>();
  void* dst = out.data_ptr();
  const bool int8_out = out_bits <= 8;
  at::parallel_for(0, R, 16, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> y(N + 16);
    const auto row = isa == ibert::Isa::kAvx2 ? (int8_out ? avx2::normalize_row<true> : avx2::normalize_row<false>)
                                              : (int8_out ? normalize_row<true> : normalize_row<false>);
    for (int64_t r = begin; r < end; ++r)
      row(src + r * N, N, bound, eps, m.data(), e.data(), beta_half.data(), qmax, y.data(),
          int8_out ? static_cast<void*>(static_cast<int8_t*>(dst) + r * N) : static_cast<int32_t*>(dst) + r * N);
  });
  return out;
}
