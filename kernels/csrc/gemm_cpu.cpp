// int8 x int8 -> int32 linear layers for x86 CPUs with AMX-INT8, AVX-512 VNNI or AVX2, with the requantization (and the
// residual add, or i-GELU) applied to the accumulators while they are in registers or L1. Bit-exact with
// kernels.gemm's references.
//
// The weights are stored once as w + 128 (uint8, packed in panels of 64 output channels), the layout every ISA reads.
// vpdpbusd (AVX-512 VNNI) multiplies uint8 by int8, so it reads them as they are and the activations too:
// a . (w + 128) = a . w + 128 rowsum(a). AVX2 has no int8 dot product: see the avx2 namespace.
#include "checks.h"
#include "ops.h"
#include "simd.h"

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kNR = 64;   // output channels per panel: four 16-lane accumulators
constexpr int64_t kMR = 6;    // rows per micro-tile at most: 6 x 4 accumulators of the 32 registers

// Everything the epilogue needs.
struct Epilogue {
  const int32_t* bias;        // [N], or null
  const int32_t* m;           // [Np] multiplier
  const int32_t* e;           // [Np] shift
  int64_t qmax;
  bool out_int32;             // else int8
  const void* res = nullptr;  // [M, N] int8 or int32 residual
  bool res_int32 = false;
  const int32_t* m_res = nullptr;  // [Np] the residual's multiplier
  const int32_t* e_res = nullptr;  // [Np] its shift
  bool gelu = false;          // i-GELU of the (mid-bit) requantized value, then a second requantization
  int32_t clip = 0, c = 0, k = 0, one = 0, r = 0;
  const int32_t* m2 = nullptr;  // [Np] the i-GELU output's multiplier (with gelu only)
  const int32_t* e2 = nullptr;  // [Np] its shift
  int64_t qmax2 = 0;
};

IBERT_SIMD_BEGIN

// i-GELU of 16 int32 lanes already within +-32767, as kernels.gelu.gelu_reference (int32 arithmetic throughout).
// sign(q) multiplies the erf term only where q != 0, and where q == 0 the result is 0 whatever the erf term.
inline __m512i gelu16(__m512i q, const Epilogue& ep) {
  const __m512i clip = _mm512_set1_epi32(ep.clip);
  const __m512i t = _mm512_sub_epi32(
      _mm512_min_epi32(_mm512_srav_epi32(_mm512_abs_epi32(q), _mm512_set1_epi32(ep.r)), clip), clip);
  __m512i s = _mm512_sub_epi32(_mm512_set1_epi32(ep.c), _mm512_mullo_epi32(t, t));
  s = _mm512_mask_sub_epi32(s, _mm512_movepi32_mask(q), _mm512_setzero_si512(), s);  // -s where q < 0
  const __m512i erf = _mm512_srav_epi32(s, _mm512_set1_epi32(ep.k));
  return _mm512_mullo_epi32(q, _mm512_add_epi32(erf, _mm512_set1_epi32(ep.one)));
}

// The dyadic multipliers of 16 channels, in their even and odd lanes.
struct Lanes {
  __m512i m_even, m_odd, half_even, half_odd, e_even, e_odd;
};

inline Lanes lanes(const int32_t* m_ptr, const int32_t* e_ptr) {
  const __m512i m = _mm512_loadu_si512(m_ptr), e = _mm512_loadu_si512(e_ptr);
  const __m512i e_even = _mm512_and_si512(e, _mm512_set1_epi64(0xffffffff)), e_odd = odd_lanes(e);
  const __m512i one = _mm512_set1_epi64(1);  // half = (1 << e) >> 1
  return {m, odd_lanes(m), _mm512_srli_epi64(_mm512_sllv_epi64(one, e_even), 1),
          _mm512_srli_epi64(_mm512_sllv_epi64(one, e_odd), 1), e_even, e_odd};
}

// One 16-channel column's requantization constants, loaded once for all the rows of a tile.
struct Column {
  __mmask16 keep;        // the channels < N
  Lanes out, res, gelu;  // res: the residual's (with a residual only); gelu: the i-GELU output's (with i-GELU only)
};

inline Column column(int64_t n, int64_t N, const Epilogue& ep) {
  Column col{below(n, N), lanes(ep.m + n, ep.e + n), {}, {}};
  if (ep.res) col.res = lanes(ep.m_res + n, ep.e_res + n);
  if (ep.gelu) col.gelu = lanes(ep.m2 + n, ep.e2 + n);
  return col;
}

// Requantize 16 accumulators (channels n .. n + 15 of one row, the bias added) and store those below N.
inline void epilogue16(__m512i acc, int64_t row, int64_t n, int64_t N, const Column& col, const Epilogue& ep,
                       void* out) {
  const __mmask16 keep = col.keep;
  __m512i even = rshift_round(acc, col.out.m_even, col.out.half_even, col.out.e_even);
  __m512i odd = rshift_round(odd_lanes(acc), col.out.m_odd, col.out.half_odd, col.out.e_odd);
  const int64_t at = row * N + n;
  if (ep.res) {
    const __m512i r = ep.res_int32 ? _mm512_maskz_loadu_epi32(keep, static_cast<const int32_t*>(ep.res) + at)
                                   : _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(keep, static_cast<const int8_t*>(ep.res) + at));
    even = _mm512_add_epi64(even, rshift_round(r, col.res.m_even, col.res.half_even, col.res.e_even));
    odd = _mm512_add_epi64(odd, rshift_round(odd_lanes(r), col.res.m_odd, col.res.half_odd, col.res.e_odd));
  }
  int64_t qmax = ep.qmax;
  if (ep.gelu) {
    const __m512i g = gelu16(join_clamp(even, odd, qmax), ep);
    even = rshift_round(g, col.gelu.m_even, col.gelu.half_even, col.gelu.e_even);
    odd = rshift_round(odd_lanes(g), col.gelu.m_odd, col.gelu.half_odd, col.gelu.e_odd);
    qmax = ep.qmax2;
  }
  const __m512i v = join_clamp(even, odd, qmax);
  if (ep.out_int32) {
    _mm512_mask_storeu_epi32(static_cast<int32_t*>(out) + at, keep, v);
  } else {
    _mm_mask_storeu_epi8(static_cast<int8_t*>(out) + at, keep, _mm512_cvtepi32_epi8(v));
  }
}

// One micro-tile: rows [row, row + R) x the 64 channels of one panel. a: int8 [M, K] (K a multiple of 4, row
// stride K); panel: [K/4][64][4] uint8; comp: 128 rowsum(a) per row.
#define IBERT_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
template <int R>
void micro_tile(const int8_t* a, int64_t K, const uint8_t* panel, const int32_t* comp, int64_t row, int64_t n0,
                int64_t N, const Epilogue& ep, void* out) {
  static_assert(R >= 1 && R <= kMR, "rows per micro-tile");
  // The accumulators start at bias - 128 rowsum(a).
  __m512i bias[4];
  for (int j = 0; j < 4; ++j) {
    const int64_t n = n0 + 16 * j;
    bias[j] = ep.bias ? _mm512_maskz_loadu_epi32(below(n, N), ep.bias + n) : _mm512_setzero_si512();
  }
#define IBERT_DECLARE(r) const __m512i comp##r = _mm512_set1_epi32(R > r ? comp[row + r] : 0);                  \
  __m512i c##r##0 = _mm512_sub_epi32(bias[0], comp##r), c##r##1 = _mm512_sub_epi32(bias[1], comp##r), \
          c##r##2 = _mm512_sub_epi32(bias[2], comp##r), c##r##3 = _mm512_sub_epi32(bias[3], comp##r);
  IBERT_ROWS(IBERT_DECLARE)
  const int8_t* arow = a + row * K;
  for (int64_t g = 0; g < K / 4; ++g) {
    const uint8_t* bg = panel + g * kNR * 4;
    const __m512i b0 = _mm512_loadu_si512(bg), b1 = _mm512_loadu_si512(bg + 64), b2 = _mm512_loadu_si512(bg + 128),
                  b3 = _mm512_loadu_si512(bg + 192);
#define IBERT_STEP(r)                                              \
    if constexpr (R > r) {                                         \
      int32_t a4;                                                  \
      std::memcpy(&a4, arow + r * K + g * 4, 4);                   \
      const __m512i av = _mm512_set1_epi32(a4);                    \
      dpbusd(c##r##0, b0, av);                                     \
      dpbusd(c##r##1, b1, av);                                     \
      dpbusd(c##r##2, b2, av);                                     \
      dpbusd(c##r##3, b3, av);                                     \
    }
    IBERT_ROWS(IBERT_STEP)
  }
  alignas(64) int32_t tile[R][kNR];  // the epilogue reads the accumulators back from L1
#define IBERT_STORE(r)                           \
  if constexpr (R > r) {                         \
    _mm512_store_si512(tile[r], c##r##0);        \
    _mm512_store_si512(tile[r] + 16, c##r##1);   \
    _mm512_store_si512(tile[r] + 32, c##r##2);   \
    _mm512_store_si512(tile[r] + 48, c##r##3);   \
  }
  IBERT_ROWS(IBERT_STORE)
  const Epilogue local = ep;  // a local copy: `ep` would be read again after every (aliasing) int8 store
  for (int64_t n = n0; n < std::min(N, n0 + kNR); n += 16) {
    const Column col = column(n, N, local);
    for (int r = 0; r < R; ++r) epilogue16(_mm512_load_si512(tile[r] + (n - n0)), row + r, n, N, col, local, out);
  }
}
#undef IBERT_DECLARE
#undef IBERT_STEP
#undef IBERT_STORE
#undef IBERT_ROWS

void tile_rows(int64_t rows, const int8_t* a, int64_t K, const uint8_t* panel, const int32_t* comp, int64_t row,
               int64_t n0, int64_t N, const Epilogue& ep, void* out) {
  switch (rows) {
    case 6: micro_tile<6>(a, K, panel, comp, row, n0, N, ep, out); break;
    case 5: micro_tile<5>(a, K, panel, comp, row, n0, N, ep, out); break;
    case 4: micro_tile<4>(a, K, panel, comp, row, n0, N, ep, out); break;
    case 3: micro_tile<3>(a, K, panel, comp, row, n0, N, ep, out); break;
    case 2: micro_tile<2>(a, K, panel, comp, row, n0, N, ep, out); break;
    default: micro_tile<1>(a, K, panel, comp, row, n0, N, ep, out); break;
  }
}

// 128 * sum of each row of a [M, K] int8 (K a multiple of 4).
void row_compensation(const int8_t* a, int64_t M, int64_t K, int32_t* comp) {
  at::parallel_for(0, M, 64, [=](int64_t begin, int64_t end) {
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t i = begin; i < end; ++i) {
      const int8_t* row = a + i * K;
      __m512i s = _mm512_setzero_si512();
      int64_t k = 0;
      for (; k + 64 <= K; k += 64) s = _mm512_dpbusd_epi32(s, ones, _mm512_loadu_si512(row + k));
      s = _mm512_dpbusd_epi32(s, ones, _mm512_maskz_loadu_epi8(bytes_below(k, K), row + k));
      comp[i] = 128 * _mm512_reduce_add_epi32(s);
    }
  });
}

IBERT_SIMD_END

// AVX2: vpmaddubsw multiplies uint8 by int8 and adds pairs into int16 with saturation, then vpmaddwd adds pairs of
// those into int32. With |w| as the uint8 operand and a sign(w) as the int8 one, each product is a . w and a pair
// sum at most 2 x 128 x 127 = 32512: nothing saturates, provided a holds no -128 (-a must fit int8). Activations
// that do hold it (only possible from a caller of the op: requantized ones are within +-127) take a scalar loop.
}  // namespace

namespace avx2 {  // beside simd.h's AVX2 helpers

IBERT_AVX2_BEGIN

// i-GELU of 8 int32 lanes within +-32767, as gelu16 above.
inline __m256i gelu8(__m256i q, const Epilogue& ep) {
  const __m256i clip = _mm256_set1_epi32(ep.clip);
  const __m256i t = _mm256_sub_epi32(
      _mm256_min_epi32(_mm256_srav_epi32(_mm256_abs_epi32(q), _mm256_set1_epi32(ep.r)), clip), clip);
  const __m256i s = _mm256_sign_epi32(_mm256_sub_epi32(_mm256_set1_epi32(ep.c), _mm256_mullo_epi32(t, t)), q);
  const __m256i erf = _mm256_srav_epi32(s, _mm256_set1_epi32(ep.k));
  return _mm256_mullo_epi32(q, _mm256_add_epi32(erf, _mm256_set1_epi32(ep.one)));
}

// The dyadic multipliers of 8 channels (m, e padded to a whole panel), in their even and odd lanes.
struct Lanes {
  __m256i m_even, m_odd, half_even, half_odd, e_even, e_odd;
};

inline Lanes lanes(const int32_t* m_ptr, const int32_t* e_ptr) {
  const __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m_ptr));
  const __m256i e = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e_ptr));
  const __m256i e_even = _mm256_and_si256(e, _mm256_set1_epi64x(0xffffffff)), e_odd = odd_lanes(e);
  const __m256i one = _mm256_set1_epi64x(1);
  return {m, odd_lanes(m), _mm256_srli_epi64(_mm256_sllv_epi64(one, e_even), 1),
          _mm256_srli_epi64(_mm256_sllv_epi64(one, e_odd), 1), e_even, e_odd};
}

// One 8-channel column's requantization constants: the output's, the residual's (with a residual only) and the
// i-GELU output's (with i-GELU only).
struct Column {
  Lanes out, res, gelu;
};

inline Column column(int64_t n, const Epilogue& ep) {
  Column col{lanes(ep.m + n, ep.e + n), {}, {}};
  if (ep.res) col.res = lanes(ep.m_res + n, ep.e_res + n);
  if (ep.gelu) col.gelu = lanes(ep.m2 + n, ep.e2 + n);
  return col;
}

// Requantize 8 accumulators (channels n .. n + 7 of one row, the bias added) and store those below N.
inline void epilogue8(__m256i acc, int64_t row, int64_t n, int64_t N, const Column& col, const Epilogue& ep,
                      void* out) {
  const int64_t at = row * N + n, lanes = std::min<int64_t>(8, N - n);
  __m256i even = rshift_round(acc, col.out.m_even, col.out.half_even, col.out.e_even);
  __m256i odd = rshift_round(odd_lanes(acc), col.out.m_odd, col.out.half_odd, col.out.e_odd);
  if (ep.res) {
    const __m256i r = ep.res_int32 ? load8(static_cast<const int32_t*>(ep.res) + at, lanes)
                                   : load8(static_cast<const int8_t*>(ep.res) + at, lanes);
    even = _mm256_add_epi64(even, rshift_round(r, col.res.m_even, col.res.half_even, col.res.e_even));
    odd = _mm256_add_epi64(odd, rshift_round(odd_lanes(r), col.res.m_odd, col.res.half_odd, col.res.e_odd));
  }
  int64_t qmax = ep.qmax;
  if (ep.gelu) {
    const __m256i g = gelu8(join_clamp(even, odd, qmax), ep);
    even = rshift_round(g, col.gelu.m_even, col.gelu.half_even, col.gelu.e_even);
    odd = rshift_round(odd_lanes(g), col.gelu.m_odd, col.gelu.half_odd, col.gelu.e_odd);
    qmax = ep.qmax2;
  }
  const __m256i v = join_clamp(even, odd, qmax);
  if (ep.out_int32) {
    store8(static_cast<int32_t*>(out) + at, v, lanes);
  } else {
    store8(static_cast<int8_t*>(out) + at, v, lanes);
  }
}

// The accumulators of rows [row, row + R) x one panel's 64 channels (bias + a . w) into tile, 16 channels at a
// time. a: int8 [M, K] without -128 (row stride K, K a multiple of 4); panel: [K/4][64][4] uint8 (w + 128);
// bias: padded to whole panels.
template <int R>
void accumulate(const int8_t* a, int64_t K, const uint8_t* panel, const int32_t* bias, int32_t (*tile)[kNR]) {
  const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8(char(0x80));
  for (int s = 0; s < kNR; s += 16) {
    __m256i acc[R][2];
    for (int r = 0; r < R; ++r) {
      acc[r][0] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bias + s));
      acc[r][1] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bias + s + 8));
    }
    for (int64_t g = 0; g < K / 4; ++g) {
      const uint8_t* bg = panel + (g * kNR + s) * 4;
      const __m256i w0 = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bg)), flip);
      const __m256i w1 = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bg + 32)), flip);
      const __m256i u0 = _mm256_abs_epi8(w0), u1 = _mm256_abs_epi8(w1);  // |-128| = 128 as uint8
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        int32_t a4;
        std::memcpy(&a4, a + r * K + g * 4, 4);
        const __m256i x = _mm256_set1_epi32(a4);
        acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(u0, _mm256_sign_epi8(x, w0)), ones));
        acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(u1, _mm256_sign_epi8(x, w1)), ones));
      }
    }
    for (int r = 0; r < R; ++r) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(tile[r] + s), acc[r][0]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(tile[r] + s + 8), acc[r][1]);
    }
  }
}

// As accumulate, for any int8 activations (-128 included), one product at a time.
template <int R>
void accumulate_scalar(const int8_t* a, int64_t K, const uint8_t* panel, const int32_t* bias, int32_t (*tile)[kNR]) {
  for (int r = 0; r < R; ++r)
    for (int64_t c = 0; c < kNR; ++c) {
      int32_t sum = bias[c];
      for (int64_t k = 0; k < K; ++k) sum += a[r * K + k] * (int32_t(panel[((k / 4) * kNR + c) * 4 + k % 4]) - 128);
      tile[r][c] = sum;
    }
}

// One micro-tile: rows [row, row + R) x the 64 channels n0 .. of one panel, accumulated and requantized.
template <int R>
void micro_tile(const int8_t* a, int64_t K, const uint8_t* panel, bool any_int8, int64_t row, int64_t n0, int64_t N,
                const Epilogue& ep, void* out) {
  alignas(32) int32_t tile[R][kNR];
  if (any_int8) {
    accumulate_scalar<R>(a + row * K, K, panel, ep.bias + n0, tile);
  } else {
    accumulate<R>(a + row * K, K, panel, ep.bias + n0, tile);
  }
  const Epilogue local = ep;  // as in the AVX-512 micro_tile
  for (int64_t n = n0; n < std::min(N, n0 + kNR); n += 8) {
    const Column col = column(n, local);
    for (int r = 0; r < R; ++r)
      epilogue8(_mm256_load_si256(reinterpret_cast<const __m256i*>(tile[r] + (n - n0))), row + r, n, N, col, local, out);
  }
}

IBERT_AVX2_END

constexpr int64_t kMR = 5;  // rows per micro-tile at most: 5 x 2 accumulators, 2 weights and their |w| of the 16 registers

void tile_rows(int64_t rows, const int8_t* a, int64_t K, const uint8_t* panel, bool any_int8, int64_t row, int64_t n0,
               int64_t N, const Epilogue& ep, void* out) {
  switch (rows) {
    case 5: micro_tile<5>(a, K, panel, any_int8, row, n0, N, ep, out); break;
    case 4: micro_tile<4>(a, K, panel, any_int8, row, n0, N, ep, out); break;
    case 3: micro_tile<3>(a, K, panel, any_int8, row, n0, N, ep, out); break;
    case 2: micro_tile<2>(a, K, panel, any_int8, row, n0, N, ep, out); break;
    default: micro_tile<1>(a, K, panel, any_int8, row, n0, N, ep, out); break;
  }
}

}  // namespace avx2

// AMX: eight tile registers of 16 rows x 64 bytes; tdpbsud adds to a 16 x 16 int32 tile the products of a 16 x 64
// int8 tile (16 rows of a, 64 of K) with a 16 x 64 uint8 one (16 groups of 4 of K x 16 channels x 4): the layout of
// 16 of a panel's channels, 256 bytes apart. So the tiles read pack_weight's panels as they are and, as vpdpbusd,
// a . (w + 128), corrected by the same 128 rowsum(a). A micro-tile is 16 or 32 rows x half a panel (32 channels):
// the threads take (block of rows, half panel) units, so that the 32 channels' weights stay in L1 while the block's
// rows stream past them.
namespace amx {

constexpr int64_t kNC = 32;  // channels per micro-tile

IBERT_AMX_BEGIN

// Every tile 16 rows x 64 bytes (palette 1). A thread loads it before its first tile instruction: the tile state
// is per thread, and another library (oneDNN) may have loaded its own between two of our calls.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

constexpr int64_t kPanelRow = kNR * 4;  // bytes of a panel per group of 4 of K
constexpr int64_t kTileRow = kNC * 4;   // bytes per row of a micro-tile's int32 accumulators

// Into L1: the 64 bytes at k of `rows` rows of a, and the weights of 32 channels for those 64 of K. A tile load
// from L2 stalls the products behind it (the tile registers are not renamed), so each step asks for the next.
inline void prefetch_step(const int8_t* a, int64_t lda, int rows, int64_t k, const uint8_t* b) {
  for (int r = 0; r < rows; ++r) _mm_prefetch(reinterpret_cast<const char*>(a + r * lda + k), _MM_HINT_T0);
  for (int g = 0; g < 16; ++g) {
    _mm_prefetch(reinterpret_cast<const char*>(b + (k / 4 + g) * kPanelRow), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(b + (k / 4 + g) * kPanelRow + 64), _MM_HINT_T0);
  }
}

// A finished micro-tile's accumulators (bias - 128 rowsum(a) not yet added) and the state of its epilogue, which
// runs 16 outputs at a time in slices between the tile steps of the next micro-tile: the AMX unit multiplies while
// the vector units requantize.
struct Finished {
  alignas(64) int32_t acc[32][kNC];
  Column col[kNC / 16];
  __m512i bias[kNC / 16];
  int64_t rows = 0, row = 0, n0 = 0, cols = 0;  // rows x (cols vectors of 16 channels) outputs at (row, n0)
  int64_t j = 0, r = 0;                           // the next vector: channels n0 + 16 j of row + r

  int64_t left() const { return (cols - j) * rows - r; }

  // Requantizes the next `count` vectors (at most those left).
  void requantize(int64_t count, const int32_t* comp, int64_t N, const Epilogue& ep, void* out) {
    const Epilogue local = ep;  // as in the AVX-512 micro_tile
    for (; j < cols && count > 0; --count) {
      const __m512i sum = _mm512_sub_epi32(_mm512_add_epi32(_mm512_load_si512(acc[r] + 16 * j), bias[j]),
                                           _mm512_set1_epi32(comp[row + r]));
      epilogue16(sum, row + r, n0 + 16 * j, N, col[j], local, out);
      if (++r == rows) r = 0, ++j;
    }
  }
};

// The accumulators of 16 RT rows of a (row stride lda; those rows exist) x 32 channels of a panel (b: their first
// byte) over K's first K64 (a multiple of 64) into tile: tile[r][c] = a[r] . (w[c] + 128), with slice() (a part of
// the previous micro-tile's epilogue) after each step. A load into a tile register waits for the products that read
// it, so the operands alternate between registers.
template <int RT, typename Slice>
void accumulate(const int8_t* a, int64_t lda, int64_t K64, const uint8_t* b, int32_t (*tile)[kNC],
                const Slice& slice) {
  if constexpr (RT == 2) {  // tiles 0-3 accumulate 2 x 2 blocks of 16 x 16; 4-5 hold a, 6-7 the weights
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    for (int64_t k = 0; k < K64; k += 64) {
      if (k + 64 < K64) prefetch_step(a, lda, 32, k + 64, b);
      const uint8_t* bk = b + k / 4 * kPanelRow;
      _tile_loadd(4, a + k, lda);
      _tile_loadd(6, bk, kPanelRow);
      _tile_dpbsud(0, 4, 6);
      _tile_loadd(7, bk + 64, kPanelRow);
      _tile_dpbsud(1, 4, 7);
      _tile_loadd(5, a + 16 * lda + k, lda);
      _tile_dpbsud(2, 5, 6);
      _tile_dpbsud(3, 5, 7);
      slice();
    }
    _tile_stored(0, tile[0], kTileRow); _tile_stored(1, tile[0] + 16, kTileRow);
    _tile_stored(2, tile[16], kTileRow); _tile_stored(3, tile[16] + 16, kTileRow);
  } else {  // tiles 0-1 accumulate 1 x 2 blocks; the operands of even steps in 2, 4, 5, of odd ones in 3, 6, 7
    _tile_zero(0); _tile_zero(1);
    for (int64_t k = 0; k < K64; k += 128) {
      if (k + 128 < K64) prefetch_step(a, lda, 16, k + 128, b);
      if (k + 192 < K64) prefetch_step(a, lda, 16, k + 192, b);
      const uint8_t* bk = b + k / 4 * kPanelRow;
      _tile_loadd(2, a + k, lda);
      _tile_loadd(4, bk, kPanelRow);
      _tile_loadd(5, bk + 64, kPanelRow);
      _tile_dpbsud(0, 2, 4);
      _tile_dpbsud(1, 2, 5);
      slice();
      if (k + 64 == K64) break;
      _tile_loadd(3, a + k + 64, lda);
      _tile_loadd(6, bk + 16 * kPanelRow, kPanelRow);
      _tile_loadd(7, bk + 16 * kPanelRow + 64, kPanelRow);
      _tile_dpbsud(0, 3, 6);
      _tile_dpbsud(1, 3, 7);
      slice();
    }
    _tile_stored(0, tile[0], kTileRow); _tile_stored(1, tile[0] + 16, kTileRow);
  }
}

// Adds to tile the groups of K past its last multiple of 64 (fewer than 16) of `rows` rows of a (stride K) x 32
// channels of a panel (b), on vpdpbusd.
inline void accumulate_k_tail(const int8_t* a, int64_t K, const uint8_t* b, int64_t rows, int32_t (*tile)[kNC]) {
  for (int64_t r = 0; r < rows; ++r) {
    __m512i c0 = _mm512_load_si512(tile[r]), c1 = _mm512_load_si512(tile[r] + 16);
    for (int64_t g = K / 64 * 16; g < K / 4; ++g) {
      int32_t a4;
      std::memcpy(&a4, a + r * K + g * 4, 4);
      const __m512i av = _mm512_set1_epi32(a4);
      dpbusd(c0, _mm512_loadu_si512(b + g * kPanelRow), av);
      dpbusd(c1, _mm512_loadu_si512(b + g * kPanelRow + 64), av);
    }
    _mm512_store_si512(tile[r], c0);
    _mm512_store_si512(tile[r] + 16, c1);
  }
}

// One thread's share of linear() on the tiles: micro-tiles of 16 RT rows x 32 channels, each one's epilogue run
// during the next one's products (the last one's when the worker ends), with the tile configuration loaded
// meanwhile (the tile state is per thread, and another library, oneDNN, may have loaded its own since our last call).
class Worker {
 public:
  // a: [M, K] int8 (K a multiple of 4), its rows from `full` on also in `last`, padded with zero rows to a whole
  // micro-tile (the tiles read 16 RT rows); packed: pack_weight's panels; comp: 128 rowsum(a) per row.
  Worker(const int8_t* a, const int8_t* last, int64_t full, int64_t K, const uint8_t* packed, const int32_t* comp,
         int64_t rows_per_tile, int64_t N, const Epilogue& ep, void* out)
      : a_(a), last_(last), full_(full), K_(K), packed_(packed), comp_(comp), rt_(rows_per_tile / 16), N_(N), ep_(ep),
        out_(out) {
    static const TileConfig config;
    _tile_loadconfig(&config);
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() {
    Finished& prev = slots_[1 - next_];
    prev.requantize(prev.left(), comp_, N_, ep_, out_);
    _tile_release();
  }

  // Rows [row, row + rows) x the 32 channels of half panel h.
  void operator()(int64_t rows, int64_t row, int64_t h) {
    const int64_t n0 = h * kNC;
    if (n0 >= N_) return;  // the padding of the last panel
    const int8_t* a = row < full_ ? a_ + row * K_ : last_;
    const uint8_t* b = packed_ + h / 2 * K_ * kNR + h % 2 * kNC * 4;
    Finished &now = slots_[next_], &prev = slots_[1 - next_];
    const int64_t K64 = K_ / 64 * 64, steps = std::max<int64_t>(K64 / 64, 1);
    const int64_t per_step = (prev.left() + steps - 1) / steps;
    const auto slice = [&] { prev.requantize(per_step, comp_, N_, ep_, out_); };
    if (rt_ == 2) {
      accumulate<2>(a, K_, K64, b, now.acc, slice);
    } else {
      accumulate<1>(a, K_, K64, b, now.acc, slice);
    }
    prev.requantize(prev.left(), comp_, N_, ep_, out_);
    if (K64 < K_) accumulate_k_tail(a, K_, b, rows, now.acc);
    now.rows = rows, now.row = row, now.n0 = n0, now.cols = (std::min(N_, n0 + kNC) - n0 + 15) / 16;
    now.j = now.r = 0;
    for (int64_t j = 0; j < now.cols; ++j) {
      now.col[j] = column(n0 + 16 * j, N_, ep_);
      now.bias[j] = ep_.bias ? _mm512_maskz_loadu_epi32(now.col[j].keep, ep_.bias + n0 + 16 * j)
                             : _mm512_setzero_si512();
    }
    next_ = 1 - next_;
  }

 private:
  const int8_t *a_, *last_;
  int64_t full_, K_;
  const uint8_t* packed_;
  const int32_t* comp_;
  int64_t rt_, N_;
  const Epilogue& ep_;
  void* out_;
  Finished slots_[2];
  int next_ = 0;
};

// The tiles' peak: `steps` x 4 tdpbssd on operands that stay in the tile registers (random bytes: the unit's
// throughput depends on the data). GCC's tile intrinsics are volatile asm: none is optimized away.
void tile_loop(int64_t steps) {
  static const TileConfig config;
  _tile_loadconfig(&config);
  alignas(64) int8_t operand[1024];
  uint32_t x = 12345;
  for (int8_t& v : operand) v = int8_t((x = x * 1664525u + 1013904223u) >> 24);
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  _tile_loadd(4, operand, 64); _tile_loadd(5, operand, 64); _tile_loadd(6, operand, 64); _tile_loadd(7, operand, 64);
  for (int64_t i = 0; i < steps; ++i) {
    _tile_dpbssd(0, 4, 6); _tile_dpbssd(1, 4, 7); _tile_dpbssd(2, 5, 6); _tile_dpbssd(3, 5, 7);
  }
  _tile_release();
}

IBERT_AMX_END

}  // namespace amx

namespace {

std::vector<int32_t> per_channel(const torch::Tensor& x, int64_t n, int64_t np) {
  std::vector<int32_t> out(np, 0);
  const int32_t* p = x.data_ptr<int32_t>();
  for (int64_t i = 0; i < n; ++i) out[i] = p[x.numel() == 1 ? 0 : i];
  return out;
}

// How linear() splits its work: rows per micro-tile (1 .. the ISA's kMR; 16 or 32 on AMX), micro-tiles per block
// of rows, and the
// order of the (block, panel) units the threads take: a block's panels in a row (the block's activations stay in
// L2) or a panel's blocks in a row (the panel stays in L2). scripts/autotune.py sweeps them per shape.
struct Blocking {
  int64_t rows, tiles;
  bool panel_major;
};

int64_t max_rows(ibert::Isa isa) {
  return isa == ibert::Isa::kAmxInt8 ? 32 : isa == ibert::Isa::kAvx512Vnni ? kMR : avx2::kMR;
}

// On AMX a (half) panel's blocks in a row: its weights stay in L1 while the rows stream past (1.1-2x faster than
// the other order at BERT shapes in scripts/autotune.py's sweep on a 2-core Xeon).
Blocking default_blocking(ibert::Isa isa) {
  return isa == ibert::Isa::kAmxInt8 ? Blocking{32, 8, true} : Blocking{max_rows(isa), 16, false};
}

// b: [rows, tiles, panel_major].
Blocking checked_blocking(const char* op, ibert::Isa isa, c10::IntArrayRef b) {
  TORCH_CHECK_VALUE(b.size() == 3, op, ": a blocking is [rows, tiles, panel_major], got ", b.size(), " values");
  ibert::check_range(op, "the blocking's rows per micro-tile", b[0], 1, max_rows(isa));
  TORCH_CHECK_VALUE(isa != ibert::Isa::kAmxInt8 || b[0] == 16 || b[0] == 32, op,
                    ": the blocking's rows per micro-tile must be 16 or 32 on amx_int8, got ", b[0]);
  ibert::check_range(op, "the blocking's micro-tiles per block", b[1], 1, 4096);
  ibert::check_range(op, "the blocking's panel_major", b[2], 0, 1);
  return {b[0], b[1], b[2] == 1};
}

// The tuned blockings per (ISA, N, K), by M (set_linear_blocking; kernels._cpu loads them from kernels/tuned).
std::mutex tuned_mutex;
std::map<std::tuple<ibert::Isa, int64_t, int64_t>, std::map<int64_t, Blocking>> tuned;

// The tuned blocking of the nearest tuned M with the same (N, K) on this ISA, else the default.
Blocking blocking_for(ibert::Isa isa, int64_t M, int64_t N, int64_t K) {
  std::lock_guard<std::mutex> lock(tuned_mutex);
  const auto found = tuned.find({isa, N, K});
  if (found == tuned.end()) return default_blocking(isa);
  const auto& by_m = found->second;
  const auto above = by_m.lower_bound(M);
  if (above == by_m.begin()) return above->second;
  const auto below = std::prev(above);
  return above == by_m.end() || M - below->first <= above->first - M ? below->second : above->second;
}

// Runs tile(rows, first row, panel) over the micro-tiles of `b.rows` rows x every panel, each thread on its own
// tile = make_tile() (a thread's state lives in it). The work is a list of (block of `b.tiles` micro-tiles' rows,
// panel) units in the blocking's order: the threads take the next unit as they finish one, so a slower core gets
// less of it. A panel is reused by every tile of its block.
template <typename MakeTile>
void for_each_tile(int64_t M, int64_t panels, const Blocking& b, const MakeTile& make_tile) {
  const int64_t tiles = (M + b.rows - 1) / b.rows, blocks = (tiles + b.tiles - 1) / b.tiles;
  const int64_t units = blocks * panels, threads = std::min<int64_t>(at::get_num_threads(), units);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    auto tile = make_tile();
    for (int64_t u = next++; u < units; u = next++) {
      const int64_t block = b.panel_major ? u % blocks : u / panels, p = b.panel_major ? u / blocks : u % panels;
      for (int64_t t = block * b.tiles; t < std::min(tiles, (block + 1) * b.tiles); ++t)
        tile(std::min(b.rows, M - t * b.rows), t * b.rows, p);
    }
  });
}

}  // namespace

// w: [N, K] int8 -> [ceil(N / 64), K4 / 4, 64, 4] uint8 holding w + 128 (K4 = K rounded up to 4; padding w = 0).
torch::Tensor pack_weight(torch::Tensor w) {
  ibert::check_tensor("pack_weight", "w", w, torch::kInt8, 2);
  const int64_t N = w.size(0), K = w.size(1), K4 = (K + 3) / 4 * 4, panels = (N + kNR - 1) / kNR;
  auto packed = torch::full({panels, K4 / 4, kNR, 4}, 128, w.options().dtype(torch::kUInt8));
  const int8_t* src = w.data_ptr<int8_t>();
  uint8_t* dst = packed.data_ptr<uint8_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      dst[(((n / kNR) * (K4 / 4) + k / 4) * kNR + n % kNR) * 4 + k % 4] = (uint8_t)(src[n * K + k] + 128);
  return packed;
}

// a: [M, K4] int8 (K4 a multiple of 4); packed from pack_weight for N outputs; bias: [N] int32 or empty;
// m, e: [1] or [N] int32, to +-qmax; out_bits: bits of the result (int8 for <= 8, else int32). residual: [M, N]
// int8/int32 or empty, with its (m_res, e_res): [1] or [N] int32. gelu: [5] int64 (clip, c, k, one, r) or empty; then
// m, e take the accumulator to the i-GELU input (qmax) and (m2, e2), [1] or [N] int32, its output to out_bits.
// blocking: [rows, tiles, panel_major], or empty for the tuned one of this shape (else the default).
torch::Tensor linear(torch::Tensor a, torch::Tensor packed, int64_t N, torch::Tensor bias, torch::Tensor m,
                     torch::Tensor e, int64_t qmax, torch::Tensor residual, torch::Tensor m_res, torch::Tensor e_res,
                     torch::Tensor gelu, torch::Tensor m2, torch::Tensor e2, int64_t out_bits,
                     std::vector<int64_t> blocking) {
  constexpr const char* op = "linear";
  ibert::check_tensor(op, "a", a, torch::kInt8, 2);
  const int64_t M = a.size(0), K = a.size(1), panels = (N + kNR - 1) / kNR, Np = panels * kNR;
  TORCH_CHECK_VALUE(K % 4 == 0, "linear: a's ", K, " columns must be a multiple of 4 (pad them with zeros)");
  ibert::check_packed(op, "packed", packed, N, K);
  if (bias.numel()) ibert::check_shape(op, "bias", bias, torch::kInt32, {N});
  ibert::check_multiplier(op, "(m, e)", m, e, N);
  ibert::check_range(op, "out_bits", out_bits, 2, 32);
  if (gelu.numel()) {
    ibert::check_gelu_params(op, "gelu", gelu);
    ibert::check_multiplier(op, "(m2, e2)", m2, e2, N);
    ibert::check_range(op, "qmax (of the i-GELU input)", qmax, 1, 32767);
  } else {
    TORCH_CHECK_VALUE(qmax == ibert::qmax_of(out_bits), "linear: without i-GELU, qmax must be 2**(out_bits - 1) - 1 = ",
                      ibert::qmax_of(out_bits), ", got ", qmax);
  }
  if (residual.numel()) {
    TORCH_CHECK_TYPE(residual.scalar_type() == torch::kInt8 || residual.scalar_type() == torch::kInt32,
                     "linear: residual must be int8 or int32");
    ibert::check_shape(op, "residual", residual, residual.scalar_type(), {M, N});
    ibert::check_multiplier(op, "(m_res, e_res)", m_res, e_res, N);
  }
  const ibert::Isa isa = ibert::require_simd(op, ibert::Isa::kAvx2);
  const Blocking b = blocking.empty() ? blocking_for(isa, M, N, K) : checked_blocking(op, isa, blocking);
  auto out = torch::empty({M, N}, a.options().dtype(out_bits <= 8 ? torch::kInt8 : torch::kInt32));
  const std::vector<int32_t> mc = per_channel(m, N, Np), ec = per_channel(e, N, Np);
  Epilogue ep{nullptr, mc.data(), ec.data(), qmax, out_bits > 8};
  std::vector<int32_t> mrc, erc;
  if (residual.numel()) {
    mrc = per_channel(m_res, N, Np), erc = per_channel(e_res, N, Np);
    ep.res = residual.data_ptr();
    ep.res_int32 = residual.scalar_type() == torch::kInt32;
    ep.m_res = mrc.data(), ep.e_res = erc.data();
  }
  std::vector<int32_t> m2c, e2c;
  if (gelu.numel()) {
    const int64_t* g = gelu.data_ptr<int64_t>();
    ep.gelu = true;
    ep.clip = (int32_t)g[0], ep.c = (int32_t)g[1], ep.k = (int32_t)g[2], ep.one = (int32_t)g[3], ep.r = (int32_t)g[4];
    m2c = per_channel(m2, N, Np), e2c = per_channel(e2, N, Np);
    ep.m2 = m2c.data(), ep.e2 = e2c.data();
    ep.qmax2 = ibert::qmax_of(out_bits);
  }
  const int8_t* ap = a.data_ptr<int8_t>();
  const uint8_t* bp = packed.data_ptr<uint8_t>();
  void* dst = out.data_ptr();
  if (isa >= ibert::Isa::kAvx512Vnni) {
    std::vector<int32_t> comp(M);
    row_compensation(ap, M, K, comp.data());
    ep.bias = bias.numel() ? bias.data_ptr<int32_t>() : nullptr;
    const int32_t* cp = comp.data();
    if (isa == ibert::Isa::kAmxInt8) {
      // The tiles read b.rows rows: a last micro-tile of fewer reads them from a copy padded with zero rows.
      const int64_t full = M / b.rows * b.rows;
      std::vector<int8_t> last(full < M ? b.rows * K : 0, 0);
      if (full < M) std::memcpy(last.data(), ap + full * K, (M - full) * K);
      for_each_tile(M, panels * kNR / amx::kNC, b,
                    [&] { return amx::Worker(ap, last.data(), full, K, bp, cp, b.rows, N, ep, dst); });
    } else {
      for_each_tile(M, panels, b, [&] {
        return [&](int64_t rows, int64_t row, int64_t p) {
          tile_rows(rows, ap, K, bp + p * K * kNR, cp, row, p * kNR, N, ep, dst);
        };
      });
    }
  } else {
    const std::vector<int32_t> bc = bias.numel() ? per_channel(bias, N, Np) : std::vector<int32_t>(Np, 0);
    ep.bias = bc.data();
    const bool any_int8 = M * K > 0 && std::memchr(ap, 0x80, M * K) != nullptr;  // a holds -128
    for_each_tile(M, panels, b, [&] {
      return [&](int64_t rows, int64_t row, int64_t p) {
        avx2::tile_rows(rows, ap, K, bp + p * K * kNR, any_int8, row, p * kNR, N, ep, dst);
      };
    });
  }
  return out;
}

void set_linear_blocking(const std::string& isa_name, const std::vector<std::vector<int64_t>>& entries) {
  constexpr const char* op = "set_linear_blocking";
  const ibert::Isa isa = ibert::isa_named(op, isa_name);
  std::map<std::tuple<ibert::Isa, int64_t, int64_t>, std::map<int64_t, Blocking>> mine;
  for (const auto& x : entries) {
    TORCH_CHECK_VALUE(x.size() == 6, op, ": an entry is [M, N, K, rows, tiles, panel_major], got ", x.size(), " values");
    mine[{isa, x[1], x[2]}][x[0]] = checked_blocking(op, isa, {x[3], x[4], x[5]});
  }
  std::lock_guard<std::mutex> lock(tuned_mutex);
  for (auto it = tuned.begin(); it != tuned.end();) it = std::get<0>(it->first) == isa ? tuned.erase(it) : std::next(it);
  tuned.merge(mine);
}

std::vector<int64_t> linear_blocking(int64_t M, int64_t N, int64_t K) {
  const Blocking b = blocking_for(ibert::require_simd("linear_blocking", ibert::Isa::kAvx2), M, N, K);
  return {b.rows, b.tiles, b.panel_major};
}

int64_t amx_tile_loop(int64_t steps) {
  ibert::check_range("amx_tile_loop", "steps", steps, 1, int64_t(1) << 40);
  ibert::require_simd("amx_tile_loop", ibert::Isa::kAmxInt8);
  const int64_t threads = at::get_num_threads();
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) amx::tile_loop(steps);
  });
  return threads * steps * 4 * 16 * 16 * 64;
}
