// Fused integer attention for x86 CPUs with AVX-512 VNNI or AVX2: per (batch, head), Q K^T, i-softmax, P V and the
// requantization of the context, with the scores kept in cache. Bit-exact with kernels.attention's reference.
//
// AVX-512 VNNI: the int8 products use vpdpbusd (uint8 x int8 -> int32): Q K^T runs as (Q + 128) K^T - 128 rowsum(K);
// P V takes the 0..255 probabilities as they are. AVX2: see the avx2 namespace.
#include "checks.h"
#include "ops.h"
#include "simd.h"

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int32_t kClip = 1 << 30;
constexpr int32_t kMaxZ = 30;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

IBERT_SIMD_BEGIN

inline __m512i bcast4(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// C[4 rows, NB x 16 cols] = A[4, 4G] (uint8, row stride lda) . B packed as [G][ldb][4] int8, columns col0...
template <int NB>
inline void dot_block(const uint8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t groups, int64_t col0,
                      int32_t* c, int64_t ldc) {
  static_assert(NB >= 1 && NB <= 4, "column vectors per block");
#define IBERT_ROWS(X) X(0) X(1) X(2) X(3)
#define IBERT_DECLARE(r) __m512i c##r##0 = _mm512_setzero_si512(), c##r##1 = c##r##0, c##r##2 = c##r##0, \
                                 c##r##3 = c##r##0;
  IBERT_ROWS(IBERT_DECLARE)
  __m512i b0 = _mm512_setzero_si512(), b1 = b0, b2 = b0, b3 = b0;
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* bg = b + (g * ldb + col0) * 4;
    b0 = _mm512_loadu_si512(bg);
    if constexpr (NB > 1) b1 = _mm512_loadu_si512(bg + 64);
    if constexpr (NB > 2) b2 = _mm512_loadu_si512(bg + 128);
    if constexpr (NB > 3) b3 = _mm512_loadu_si512(bg + 192);
#define IBERT_STEP(r)                                      \
    {                                                      \
      const __m512i av = bcast4(a + r * lda + g * 4);      \
      dpbusd(c##r##0, av, b0);                             \
      if constexpr (NB > 1) dpbusd(c##r##1, av, b1);       \
      if constexpr (NB > 2) dpbusd(c##r##2, av, b2);       \
      if constexpr (NB > 3) dpbusd(c##r##3, av, b3);       \
    }
    IBERT_ROWS(IBERT_STEP)
  }
#define IBERT_STORE(r)                                                         \
  {                                                                            \
    int32_t* row = c + r * ldc + col0;                                         \
    _mm512_storeu_si512(row, c##r##0);                                         \
    if constexpr (NB > 1) _mm512_storeu_si512(row + 16, c##r##1);              \
    if constexpr (NB > 2) _mm512_storeu_si512(row + 32, c##r##2);              \
    if constexpr (NB > 3) _mm512_storeu_si512(row + 48, c##r##3);              \
  }
  IBERT_ROWS(IBERT_STORE)
#undef IBERT_DECLARE
#undef IBERT_STEP
#undef IBERT_STORE
#undef IBERT_ROWS
}

// C[rows, cols] = A[rows, 4 groups] . B, rows a multiple of 4, cols a multiple of 16.
void dot(const uint8_t* a, int64_t lda, const int8_t* b, int64_t groups, int64_t rows, int64_t cols, int32_t* c) {
  for (int64_t i = 0; i < rows; i += 4) {
    int64_t col = 0;
    for (; col + 64 <= cols; col += 64) dot_block<4>(a + i * lda, lda, b, cols, groups, col, c + i * cols, cols);
    switch ((cols - col) / 16) {
      case 3: dot_block<3>(a + i * lda, lda, b, cols, groups, col, c + i * cols, cols); break;
      case 2: dot_block<2>(a + i * lda, lda, b, cols, groups, col, c + i * cols, cols); break;
      case 1: dot_block<1>(a + i * lda, lda, b, cols, groups, col, c + i * cols, cols); break;
      default: break;
    }
  }
}

// i-softmax of one row of scores x - ksum, exactly as kernels.softmax.softmax_reference, 16 lanes at a time.
// mask: the row's additive mask, already clipped to +-kClip (zeros for none); ex: scratch [n rounded up to 16].
void softmax_row(const int32_t* __restrict x, const int32_t* __restrict ksum, const int32_t* __restrict mask,
                 int64_t n, const int32_t* prm, int out_bits, int32_t* __restrict ex, uint8_t* __restrict out) {
  const int32_t x0 = prm[0], shift = prm[3];
  const __m128i r = _mm_cvtsi32_si128(prm[4]);
  const __m512i clip = _mm512_set1_epi32(kClip);
  __m512i top_v = _mm512_set1_epi32(INT32_MIN);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = below(j, n);
    const __m512i y = _mm512_add_epi32(
        _mm512_min_epi32(_mm512_max_epi32(_mm512_sub_epi32(_mm512_loadu_si512(x + j), _mm512_loadu_si512(ksum + j)),
                                          _mm512_sub_epi32(_mm512_setzero_si512(), clip)), clip),
        _mm512_maskz_loadu_epi32(k, mask + j));
    _mm512_storeu_si512(ex + j, y);
    top_v = _mm512_mask_max_epi32(top_v, k, top_v, y);
  }
  const int32_t top = _mm512_reduce_max_epi32(top_v);
  const __m512i low = _mm512_set1_epi32(std::max(top, -kClip) - kClip), top16 = _mm512_set1_epi32(top);  // no underflow
  const __m512i zmin = _mm512_set1_epi32(kMaxZ * x0), vx0 = _mm512_set1_epi32(x0), one = _mm512_set1_epi32(1);
  const __m512i b = _mm512_set1_epi32(prm[1]), c = _mm512_set1_epi32(prm[2]), zshift = _mm512_set1_epi32(shift);
  const __m512i inv = _mm512_set1_epi64(0xffffffffu / (uint32_t)(-x0)), max_shift = _mm512_set1_epi32(31);
  __m512i sum = _mm512_setzero_si512();
  for (int64_t j = 0; j < n; j += 16) {
    const __m512i d = _mm512_max_epi32(
        _mm512_sra_epi32(_mm512_sub_epi32(_mm512_max_epi32(_mm512_loadu_si512(ex + j), low), top16), r), zmin);
    // z = d // x0 in [0, 30] (floor_div_small): |d| * floor((2**32 - 1) / |x0|) / 2**32 is z or z - 1
    const __m512i nd = _mm512_sub_epi32(_mm512_setzero_si512(), d);
    __m512i z = _mm512_mask_mov_epi32(_mm512_srli_epi64(_mm512_mul_epu32(nd, inv), 32), 0xaaaa,
                                      _mm512_mul_epu32(odd_lanes(nd), inv));
    __m512i zx = _mm512_mullo_epi32(z, vx0);
    const __mmask16 up = _mm512_cmple_epi32_mask(d, _mm512_add_epi32(zx, vx0));
    z = _mm512_mask_add_epi32(z, up, z, one);
    zx = _mm512_mask_add_epi32(zx, up, zx, vx0);
    const __m512i p = _mm512_sub_epi32(d, zx);
    const __m512i e = _mm512_srav_epi32(_mm512_add_epi32(_mm512_mullo_epi32(_mm512_add_epi32(p, b), p), c),
                                        _mm512_min_epi32(_mm512_add_epi32(z, zshift), max_shift));
    _mm512_storeu_si512(ex + j, e);
    sum = _mm512_mask_add_epi32(sum, below(j, n), sum, e);
  }
  const int32_t total = _mm512_reduce_add_epi32(sum);  // > 0 for params from softmax_params
  TORCH_CHECK_VALUE(total > 0, "attention: a row's exps sum to ", total, ": params are not from softmax_params");
  const __m512i factor = _mm512_set1_epi32(INT32_MAX / total);
  const __m512i top_p = _mm512_set1_epi32((1 << out_bits) - 1);
  const __m128i down = _mm_cvtsi32_si128(30 - out_bits);
  for (int64_t j = 0; j < n; j += 16) {
    const __m512i q = _mm512_sra_epi32(_mm512_mullo_epi32(_mm512_loadu_si512(ex + j), factor), down);
    const __m512i v = _mm512_min_epi32(_mm512_srai_epi32(_mm512_add_epi32(q, one), 1), top_p);
    _mm_mask_storeu_epi8(out + j, below(j, n), _mm512_cvtepi32_epi8(v));
  }
}

// One head's operands from the fused QKV rows (row stride ld): Q + 128 as uint8 [Sp, dp] (padding 128, i.e. q = 0),
// K packed [dp/4][Sp][4], V packed [Sp/4][dp][4] (padding 0), and 128 rowsum(K) [S].
void pack_head(const int8_t* __restrict qrow, int64_t ld, int64_t H, int64_t S, int64_t d, int64_t Sp, int64_t dp,
               uint8_t* __restrict q, int8_t* __restrict kp, int8_t* __restrict vp, int32_t* __restrict ksum) {
  const __m512i sign = _mm512_set1_epi8((char)0x80), ones = _mm512_set1_epi8(1);
  std::memset(kp, 0, Sp * dp);
  for (int64_t i = 0; i < Sp; ++i) {
    for (int64_t k = 0; k < dp; k += 64) {  // rows and columns past the head's are 0 (q: 128)
      const __m512i x = _mm512_maskz_loadu_epi8(i < S ? bytes_below(k, d) : 0, qrow + i * ld + k);
      _mm512_mask_storeu_epi8(q + i * dp + k, bytes_below(k, dp), _mm512_xor_si512(x, sign));
    }
    if (i >= S) continue;
    const int8_t* __restrict key = qrow + i * ld + H;
    __m512i s = _mm512_setzero_si512();
    for (int64_t k = 0; k < d; k += 64)
      s = _mm512_dpbusd_epi32(s, ones, _mm512_maskz_loadu_epi8(bytes_below(k, d), key + k));
    ksum[i] = 128 * _mm512_reduce_add_epi32(s);
    int64_t k = 0;
    for (; k + 4 <= d; k += 4) std::memcpy(kp + ((k >> 2) * Sp + i) * 4, key + k, 4);
    for (; k < d; ++k) kp[((k >> 2) * Sp + i) * 4 + (k & 3)] = key[k];
  }
  // V: four rows interleaved byte by byte into 32-bit words, 16 columns at a time (rows past S are 0)
  for (int64_t i = 0; i < Sp; i += 4) {
    __m128i* __restrict dst = reinterpret_cast<__m128i*>(vp + i * dp);
    for (int64_t k = 0; k < dp; k += 16) {
      __m128i r[4];
      for (int t = 0; t < 4; ++t)
        r[t] = _mm_maskz_loadu_epi8(i + t < S ? below(k, d) : 0, qrow + (i + t) * ld + 2 * H + k);
      const __m128i lo01 = _mm_unpacklo_epi8(r[0], r[1]), hi01 = _mm_unpackhi_epi8(r[0], r[1]);
      const __m128i lo23 = _mm_unpacklo_epi8(r[2], r[3]), hi23 = _mm_unpackhi_epi8(r[2], r[3]);
      _mm_storeu_si128(dst + k / 4, _mm_unpacklo_epi16(lo01, lo23));
      _mm_storeu_si128(dst + k / 4 + 1, _mm_unpackhi_epi16(lo01, lo23));
      _mm_storeu_si128(dst + k / 4 + 2, _mm_unpacklo_epi16(hi01, hi23));
      _mm_storeu_si128(dst + k / 4 + 3, _mm_unpackhi_epi16(hi01, hi23));
    }
  }
}

// round(acc * m / 2**e) clamped to +-qmax, for one head's [S, d] context (row strides dp in, H out).
void requantize_head(const int32_t* __restrict acc, int64_t S, int64_t d, int64_t dp, int64_t m, int64_t e,
                     int64_t qmax, int8_t* __restrict out, int64_t H) {
  const __m512i mv = _mm512_set1_epi64(m), half = _mm512_set1_epi64(half_of(e)), ev = _mm512_set1_epi64(e);
  for (int64_t i = 0; i < S; ++i)
    for (int64_t k = 0; k < d; k += 16) {
      const __m512i x = _mm512_loadu_si512(acc + i * dp + k);
      const __m512i v = join_clamp(rshift_round(x, mv, half, ev), rshift_round(odd_lanes(x), mv, half, ev), qmax);
      _mm_mask_storeu_epi8(out + i * H + k, below(k, d), _mm512_cvtepi32_epi8(v));
    }
}

IBERT_SIMD_END

// AVX2, which has no int8 dot product: Q K^T with vpmaddubsw on |k| x q sign(k), exact for q without -128 as in
// gemm_cpu.cpp's AVX2 kernel (a head whose q holds -128, possible only from a caller of the op, takes a scalar
// loop); P V with vpmaddwd on the probabilities and V as int16.
}  // namespace

namespace avx2 {  // beside simd.h's AVX2 helpers

IBERT_AVX2_BEGIN

// One head's operands from the fused QKV rows (row stride ld): Q as it is [Sp, dp], K packed [dp/4][Sp][4] and V
// as int16 pairs of rows [Sp/2][dp][2], zero past the head's rows and columns. Returns whether q holds -128.
bool pack_head(const int8_t* __restrict qrow, int64_t ld, int64_t H, int64_t S, int64_t d, int64_t Sp, int64_t dp,
               int8_t* __restrict q, int8_t* __restrict kp, int16_t* __restrict vp) {
  std::memset(q, 0, Sp * dp);
  std::memset(kp, 0, Sp * dp);
  std::memset(vp, 0, Sp * dp * sizeof(int16_t));
  bool any_int8 = false;
  for (int64_t i = 0; i < S; ++i) {
    const int8_t* row = qrow + i * ld;
    std::memcpy(q + i * dp, row, d);
    any_int8 = any_int8 || std::memchr(row, 0x80, d) != nullptr;
    for (int64_t k = 0; k < d; ++k) kp[((k >> 2) * Sp + i) * 4 + (k & 3)] = row[H + k];
    for (int64_t k = 0; k < d; ++k) vp[((i >> 1) * dp + k) * 2 + (i & 1)] = row[2 * H + k];
  }
  return any_int8;
}

// C[rows, cols] = A . B, rows a multiple of 4 and cols of 16: for each group g, 4 bytes of each row of A (row stride
// lda bytes) against B's 64 bytes of the group's 16 columns ([groups][cols][4 bytes]); mul(x, b) gives 8 int32 lanes
// of sums from the broadcast 4 bytes x and 32 bytes of B.
template <typename Mul>
void dot(const void* a, int64_t lda, const void* b, int64_t groups, int64_t rows, int64_t cols, int32_t* c,
         const Mul& mul) {
  const auto* a8 = static_cast<const uint8_t*>(a);
  const auto* b8 = static_cast<const uint8_t*>(b);
  for (int64_t i = 0; i < rows; i += 4)
    for (int64_t col = 0; col < cols; col += 16) {
      __m256i acc[4][2];
      for (auto& row : acc) row[0] = row[1] = _mm256_setzero_si256();
      for (int64_t g = 0; g < groups; ++g) {
        const uint8_t* bg = b8 + (g * cols + col) * 4;
        const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bg));
        const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bg + 32));
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) {
          int32_t a4;
          std::memcpy(&a4, a8 + (i + r) * lda + g * 4, 4);
          const __m256i x = _mm256_set1_epi32(a4);
          acc[r][0] = _mm256_add_epi32(acc[r][0], mul(x, b0));
          acc[r][1] = _mm256_add_epi32(acc[r][1], mul(x, b1));
        }
      }
      for (int r = 0; r < 4; ++r) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + (i + r) * cols + col), acc[r][0]);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + (i + r) * cols + col + 8), acc[r][1]);
      }
    }
}

// Q K^T: four int8 q (without -128) against four int8 k per lane, |k| x q sign(k) (|k| is the same for every row).
struct QkProducts {
  __m256i operator()(__m256i q, __m256i k) const {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(k), _mm256_sign_epi8(q, k)), _mm256_set1_epi16(1));
  }
};

// P V: two int16 probabilities against two int16 v per lane; each adds two products of at most 255 x 128.
struct PvProducts {
  __m256i operator()(__m256i p, __m256i v) const { return _mm256_madd_epi16(p, v); }
};

// As qk, for any int8 q (-128 included), one product at a time.
void qk_scalar(const int8_t* q, int64_t ldq, const int8_t* k, int64_t groups, int64_t rows, int64_t cols, int32_t* c) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      int32_t sum = 0;
      for (int64_t t = 0; t < 4 * groups; ++t) sum += q[i * ldq + t] * k[((t >> 2) * cols + j) * 4 + (t & 3)];
      c[i * cols + j] = sum;
    }
}

// i-softmax of one row of scores x (as the AVX-512 softmax_row, 8 lanes at a time), into int16 probabilities, 0
// past n. x, mask (clipped to +-kClip), ex (scratch) and out hold n rounded up to 8.
void softmax_row(const int32_t* __restrict x, const int32_t* __restrict mask, int64_t n, const int32_t* prm,
                 int out_bits, int32_t* __restrict ex, int16_t* __restrict out) {
  const int32_t x0 = prm[0], shift = prm[3];
  const __m128i r = _mm_cvtsi32_si128(prm[4]);
  const __m256i clip = _mm256_set1_epi32(kClip), nclip = _mm256_set1_epi32(-kClip), lowest = _mm256_set1_epi32(INT32_MIN);
  __m256i top_v = lowest;
  for (int64_t j = 0; j < n; j += 8) {
    const __m256i y = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j)), nclip), clip),
                                       _mm256_loadu_si256(reinterpret_cast<const __m256i*>(mask + j)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ex + j), y);
    top_v = _mm256_max_epi32(top_v, _mm256_blendv_epi8(lowest, y, below(j, n)));
  }
  const int32_t top = reduce_max(top_v);
  const __m256i low = _mm256_set1_epi32(std::max(top, -kClip) - kClip), top8 = _mm256_set1_epi32(top);  // no underflow
  const __m256i zmin = _mm256_set1_epi32(kMaxZ * x0), vx0 = _mm256_set1_epi32(x0), one = _mm256_set1_epi32(1);
  const __m256i b = _mm256_set1_epi32(prm[1]), c = _mm256_set1_epi32(prm[2]), zshift = _mm256_set1_epi32(shift);
  const __m256i inv = _mm256_set1_epi64x(0xffffffffu / (uint32_t)(-x0)), max_shift = _mm256_set1_epi32(31);
  __m256i sum = _mm256_setzero_si256();
  for (int64_t j = 0; j < n; j += 8) {
    const __m256i d = _mm256_max_epi32(
        _mm256_sra_epi32(_mm256_sub_epi32(_mm256_max_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ex + j)), low), top8), r), zmin);
    // z = d // x0 in [0, 30] (floor_div_small): |d| * floor((2**32 - 1) / |x0|) / 2**32 is z or z - 1
    const __m256i nd = _mm256_sub_epi32(_mm256_setzero_si256(), d);
    __m256i z = _mm256_blend_epi32(_mm256_srli_epi64(_mm256_mul_epu32(nd, inv), 32),
                                   _mm256_mul_epu32(odd_lanes(nd), inv), 0xaa);
    __m256i zx = _mm256_mullo_epi32(z, vx0);
    const __m256i up = _mm256_xor_si256(_mm256_cmpgt_epi32(d, _mm256_add_epi32(zx, vx0)), _mm256_set1_epi32(-1));
    z = _mm256_add_epi32(z, _mm256_and_si256(up, one));
    zx = _mm256_add_epi32(zx, _mm256_and_si256(up, vx0));
    const __m256i p = _mm256_sub_epi32(d, zx);
    const __m256i e = _mm256_srav_epi32(_mm256_add_epi32(_mm256_mullo_epi32(_mm256_add_epi32(p, b), p), c),
                                        _mm256_min_epi32(_mm256_add_epi32(z, zshift), max_shift));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ex + j), e);
    sum = _mm256_add_epi32(sum, _mm256_and_si256(e, below(j, n)));
  }
  const int32_t total = reduce_add(sum);  // > 0 for params from softmax_params
  TORCH_CHECK_VALUE(total > 0, "attention: a row's exps sum to ", total, ": params are not from softmax_params");
  const __m256i factor = _mm256_set1_epi32(INT32_MAX / total);
  const __m256i top_p = _mm256_set1_epi32((1 << out_bits) - 1);
  const __m128i down = _mm_cvtsi32_si128(30 - out_bits);
  for (int64_t j = 0; j < n; j += 8) {
    const __m256i q = _mm256_sra_epi32(_mm256_mullo_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ex + j)), factor), down);
    const __m256i v = _mm256_and_si256(_mm256_min_epi32(_mm256_srai_epi32(_mm256_add_epi32(q, one), 1), top_p), below(j, n));
    const __m256i v16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(v, v), 0x08);  // 0..255: packs exactly
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), _mm256_castsi256_si128(v16));
  }
}

// round(acc * m / 2**e) clamped to +-qmax, for one head's [S, d] context (row strides dp in, H out).
void requantize_head(const int32_t* __restrict acc, int64_t S, int64_t d, int64_t dp, int64_t m, int64_t e,
                     int64_t qmax, int8_t* __restrict out, int64_t H) {
  const __m256i mv = _mm256_set1_epi64x(m), half = _mm256_set1_epi64x(half_of(e)), ev = _mm256_set1_epi64x(e);
  for (int64_t i = 0; i < S; ++i)
    for (int64_t k = 0; k < d; k += 8) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + i * dp + k));
      const __m256i v = join_clamp(rshift_round(x, mv, half, ev), rshift_round(odd_lanes(x), mv, half, ev), qmax);
      store8(out + i * H + k, v, std::min<int64_t>(8, d - k));
    }
}

IBERT_AVX2_END

}  // namespace avx2

// qkv: [B*S, 3*heads*d] int8 (per token: q, k, v, each [heads, d]); mask: [B, S] int32 or empty; params: [5]
// int64 (softmax_params); m_t, e_t: [1] int32 dyadic multiplier of the context; head_mask: [heads] uint8 or
// empty. Returns ctx [B*S, heads*d] int8 and the probabilities [B, heads, S, S] uint8 (empty unless asked).
std::vector<torch::Tensor> attention(torch::Tensor qkv, torch::Tensor mask, torch::Tensor params, torch::Tensor m_t,
                                     torch::Tensor e_t, torch::Tensor head_mask, int64_t batch, int64_t heads,
                                     int64_t softmax_bits, int64_t qmax, bool want_probs) {
  constexpr const char* op = "attention";
  ibert::check_tensor(op, "qkv", qkv, torch::kInt8, 2);
  ibert::check_range(op, "heads", heads, 1, INT32_MAX);
  ibert::check_range(op, "batch", batch, 0, INT32_MAX);
  const int64_t tokens = qkv.size(0), H = qkv.size(1) / 3, d = H / heads;
  TORCH_CHECK_VALUE(qkv.size(1) > 0 && qkv.size(1) % (3 * heads) == 0, "attention: qkv's width (", qkv.size(1),
                    ") must be 3 * heads * head_size with heads = ", heads);
  TORCH_CHECK_VALUE(batch > 0 ? tokens % batch == 0 : tokens == 0, "attention: qkv's ", tokens,
                    " rows must be batch (", batch, ") x sequence length");
  const int64_t S = batch > 0 ? tokens / batch : 0;
  ibert::check_range(op, "the sequence length (the softmax row sum is exact below 65536)", S, 0, 65535);
  if (mask.numel()) ibert::check_shape(op, "mask", mask, torch::kInt32, {batch, S});
  ibert::check_softmax_params(op, "params", params);
  ibert::check_multiplier(op, "(m, e)", m_t, e_t, 1);
  if (head_mask.numel()) {
    ibert::check_shape(op, "head_mask", head_mask, torch::kUInt8, {heads});
    const uint8_t* keep = head_mask.data_ptr<uint8_t>();
    for (int64_t h = 0; h < heads; ++h)
      TORCH_CHECK_VALUE(keep[h] <= 1, "attention: head_mask must hold zeros and ones, got ", int(keep[h]), " at ", h);
  }
  ibert::check_range(op, "softmax_bits", softmax_bits, 2, 8);
  ibert::check_range(op, "qmax", qmax, 1, 127);
  const ibert::Isa isa = ibert::require_simd(op, ibert::Isa::kAvx2);
  const int64_t Sp = round_up(S, 16), dp = round_up(d, 16);
  auto ctx = torch::empty({tokens, H}, qkv.options());
  auto probs = torch::empty(want_probs ? std::vector<int64_t>{batch, heads, S, S} : std::vector<int64_t>{0},
                            qkv.options().dtype(torch::kUInt8));
  if (tokens == 0) return {ctx, probs};
  const int64_t m = m_t.data_ptr<int32_t>()[0], e = e_t.data_ptr<int32_t>()[0];
  const int8_t* src = qkv.data_ptr<int8_t>();
  const int32_t* mk = mask.numel() ? mask.data_ptr<int32_t>() : nullptr;
  const uint8_t* hm = head_mask.numel() ? head_mask.data_ptr<uint8_t>() : nullptr;
  int32_t prm[5];
  for (int i = 0; i < 5; ++i) prm[i] = (int32_t)params.data_ptr<int64_t>()[i];
  int8_t* out = ctx.data_ptr<int8_t>();
  uint8_t* pout = want_probs ? probs.data_ptr<uint8_t>() : nullptr;
  const int bits = (int)softmax_bits;

  if (isa == ibert::Isa::kAvx2) {
    at::parallel_for(0, batch * heads, 1, [=](int64_t begin, int64_t end) {
      std::vector<int8_t> q(Sp * dp), kp(Sp * dp);
      std::vector<int16_t> vp(Sp * dp), p(Sp * Sp);
      std::vector<int32_t> scores(Sp * Sp), ex(Sp), acc(Sp * dp), mrow(Sp, 0);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / heads, h = task % heads;
        const bool any_int8 = avx2::pack_head(src + bi * S * 3 * H + h * d, 3 * H, H, S, d, Sp, dp, q.data(),
                                              kp.data(), vp.data());
        if (any_int8) {
          avx2::qk_scalar(q.data(), dp, kp.data(), dp / 4, Sp, Sp, scores.data());
        } else {
          avx2::dot(q.data(), dp, kp.data(), dp / 4, Sp, Sp, scores.data(), avx2::QkProducts{});
        }
        std::fill(p.begin(), p.end(), 0);
        if (mk)
          for (int64_t j = 0; j < S; ++j) mrow[j] = std::min(std::max(mk[bi * S + j], -kClip), kClip);
        if (!hm || hm[h])
          for (int64_t i = 0; i < S; ++i)
            avx2::softmax_row(scores.data() + i * Sp, mrow.data(), S, prm, bits, ex.data(), p.data() + i * Sp);
        if (pout)
          for (int64_t i = 0; i < S; ++i)
            for (int64_t j = 0; j < S; ++j) pout[(task * S + i) * S + j] = uint8_t(p[i * Sp + j]);
        avx2::dot(p.data(), 2 * Sp, vp.data(), Sp / 2, Sp, dp, acc.data(), avx2::PvProducts{});
        avx2::requantize_head(acc.data(), S, d, dp, m, e, qmax, out + bi * S * H + h * d, H);
      }
    });
    return {ctx, probs};
  }
  at::parallel_for(0, batch * heads, 1, [=](int64_t begin, int64_t end) {
    std::vector<uint8_t> q(Sp * dp), p(Sp * Sp);
    std::vector<int8_t> kp(Sp * dp), vp(Sp * dp);
    std::vector<int32_t> scores(Sp * Sp), ksum(Sp), ex(Sp), acc(Sp * dp), mrow(S, 0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / heads, h = task % heads;
      pack_head(src + bi * S * 3 * H + h * d, 3 * H, H, S, d, Sp, dp, q.data(), kp.data(), vp.data(), ksum.data());
      dot(q.data(), dp, kp.data(), dp / 4, Sp, Sp, scores.data());
      std::fill(p.begin(), p.end(), 0);
      if (mk)
        for (int64_t j = 0; j < S; ++j) mrow[j] = std::min(std::max(mk[bi * S + j], -kClip), kClip);
      if (!hm || hm[h]) {
        for (int64_t i = 0; i < S; ++i) {
          softmax_row(scores.data() + i * Sp, ksum.data(), mrow.data(), S, prm, bits, ex.data(), p.data() + i * Sp);
        }
      }
      if (pout)
        for (int64_t i = 0; i < S; ++i) std::memcpy(pout + (task * S + i) * S, p.data() + i * Sp, S);
      dot(p.data(), Sp, vp.data(), Sp / 4, Sp, dp, acc.data());
      requantize_head(acc.data(), S, d, dp, m, e, qmax, out + bi * S * H + h * d, H);
    }
  });
  return {ctx, probs};
}
