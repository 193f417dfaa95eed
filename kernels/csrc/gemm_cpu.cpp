// int8 x int8 -> int32 linear layers for x86 CPUs with AVX-512 VNNI, with the requantization (and the residual
// add, or i-GELU) applied to the accumulators in registers. Bit-exact with kernels.gemm's references.
//
// vpdpbusd multiplies uint8 by int8, so the weights are stored once as w + 128 (uint8, packed in panels of 64
// output channels) and the activations are read as they are: a . (w + 128) = a . w + 128 rowsum(a).
#include "ops.h"
#include "vnni.h"

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kNR = 64;   // output channels per panel: four 16-lane accumulators
constexpr int64_t kMR = 6;    // rows per micro-tile: 6 x 4 accumulators of the 32 registers
constexpr int64_t kBlockTiles = 16;  // micro-tiles per block of rows (96 rows)

// Everything the epilogue needs, per output channel widened to int64 lanes.
struct Epilogue {
  const int32_t* bias;        // [N], or null
  const int64_t* m;           // [Np] multiplier
  const int64_t* half;        // [Np] (1 << e) >> 1
  const int64_t* e;           // [Np] shift
  int64_t qmax;
  bool out_int32;             // else int8
  const void* res = nullptr;  // [M, N] int8 or int32 residual
  bool res_int32 = false;
  int64_t m_res = 0, half_res = 0, e_res = 0;
  bool gelu = false;          // i-GELU of the (mid-bit) requantized value, then a per-tensor requantization
  int32_t clip = 0, c = 0, k = 0, one = 0, r = 0;
  int64_t m2 = 0, half2 = 0, e2 = 0, qmax2 = 0;
};

inline __m512i rshift_round(__m512i x, __m512i m, __m512i half, __m512i e) {
  return _mm512_srav_epi64(_mm512_add_epi64(_mm512_mul_epi32(x, m), half), e);
}

inline __m512i lo64(__m512i x) { return _mm512_cvtepi32_epi64(_mm512_castsi512_si256(x)); }
inline __m512i hi64(__m512i x) { return _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(x, 1)); }

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

// Two int64 halves (lanes 0-7, 8-15) -> 16 int32 lanes clamped to +-qmax (qmax < 2**31: saturating first is exact).
inline __m512i narrow_clamp(__m512i lo, __m512i hi, int64_t qmax) {
  const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtsepi64_epi32(lo)), _mm512_cvtsepi64_epi32(hi), 1);
  return _mm512_min_epi32(_mm512_max_epi32(v, _mm512_set1_epi32((int32_t)-qmax)), _mm512_set1_epi32((int32_t)qmax));
}

// One 16-channel column's epilogue constants, loaded once for all the rows of a tile.
struct Column {
  __mmask16 keep;  // the channels < N
  __m512i bias, m_lo, m_hi, half_lo, half_hi, e_lo, e_hi;
};

inline Column column(int64_t n, int64_t N, const Epilogue& ep) {
  const __mmask16 keep = N - n >= 16 ? 0xffff : (__mmask16)((1u << (N - n)) - 1);
  return {keep, ep.bias ? _mm512_maskz_loadu_epi32(keep, ep.bias + n) : _mm512_setzero_si512(),
          _mm512_loadu_si512(ep.m + n), _mm512_loadu_si512(ep.m + n + 8), _mm512_loadu_si512(ep.half + n),
          _mm512_loadu_si512(ep.half + n + 8), _mm512_loadu_si512(ep.e + n), _mm512_loadu_si512(ep.e + n + 8)};
}

// Requantize 16 accumulators (channels n .. n + 15 of one row) and store those below N.
inline void epilogue16(__m512i acc, int64_t row, int64_t n, int64_t N, const Column& col, const Epilogue& ep,
                       void* out) {
  const __mmask16 keep = col.keep;
  acc = _mm512_add_epi32(acc, col.bias);
  __m512i lo = rshift_round(lo64(acc), col.m_lo, col.half_lo, col.e_lo);
  __m512i hi = rshift_round(hi64(acc), col.m_hi, col.half_hi, col.e_hi);
  const int64_t at = row * N + n;
  if (ep.res) {
    const __m512i r = ep.res_int32 ? _mm512_maskz_loadu_epi32(keep, static_cast<const int32_t*>(ep.res) + at)
                                   : _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(keep, static_cast<const int8_t*>(ep.res) + at));
    const __m512i m = _mm512_set1_epi64(ep.m_res), half = _mm512_set1_epi64(ep.half_res), e = _mm512_set1_epi64(ep.e_res);
    lo = _mm512_add_epi64(lo, rshift_round(lo64(r), m, half, e));
    hi = _mm512_add_epi64(hi, rshift_round(hi64(r), m, half, e));
  }
  int64_t qmax = ep.qmax;
  if (ep.gelu) {
    const __m512i g = gelu16(narrow_clamp(lo, hi, qmax), ep);
    const __m512i m = _mm512_set1_epi64(ep.m2), half = _mm512_set1_epi64(ep.half2), e = _mm512_set1_epi64(ep.e2);
    lo = rshift_round(lo64(g), m, half, e);
    hi = rshift_round(hi64(g), m, half, e);
    qmax = ep.qmax2;
  }
  const __m512i v = narrow_clamp(lo, hi, qmax);
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
#define IBERT_DECLARE(r) __m512i c##r##0 = _mm512_setzero_si512(), c##r##1 = c##r##0, c##r##2 = c##r##0, \
                                 c##r##3 = c##r##0;
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
#define IBERT_STORE(r)                                                                   \
  if constexpr (R > r) {                                                                 \
    const __m512i c = _mm512_set1_epi32(comp[row + r]);                                  \
    _mm512_store_si512(tile[r], _mm512_sub_epi32(c##r##0, c));                           \
    _mm512_store_si512(tile[r] + 16, _mm512_sub_epi32(c##r##1, c));                      \
    _mm512_store_si512(tile[r] + 32, _mm512_sub_epi32(c##r##2, c));                      \
    _mm512_store_si512(tile[r] + 48, _mm512_sub_epi32(c##r##3, c));                      \
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
      const __mmask64 tail = K - k == 0 ? 0 : (~0ull >> (64 - (K - k)));
      s = _mm512_dpbusd_epi32(s, ones, _mm512_maskz_loadu_epi8(tail, row + k));
      comp[i] = 128 * _mm512_reduce_add_epi32(s);
    }
  });
}

std::vector<int64_t> widen(const torch::Tensor& x, int64_t n, int64_t np) {
  std::vector<int64_t> out(np, 0);
  const int32_t* p = x.data_ptr<int32_t>();
  for (int64_t i = 0; i < n; ++i) out[i] = p[x.numel() == 1 ? 0 : i];
  return out;
}

inline int64_t half_of(int64_t e) { return e > 0 ? int64_t(1) << (e - 1) : 0; }

}  // namespace

// w: [N, K] int8 -> [ceil(N / 64), K4 / 4, 64, 4] uint8 holding w + 128 (K4 = K rounded up to 4; padding 0).
torch::Tensor pack_weight(torch::Tensor w) {
  const int64_t N = w.size(0), K = w.size(1), K4 = (K + 3) / 4 * 4, panels = (N + kNR - 1) / kNR;
  auto packed = torch::zeros({panels, K4 / 4, kNR, 4}, w.options().dtype(torch::kUInt8));
  const int8_t* src = w.data_ptr<int8_t>();
  uint8_t* dst = packed.data_ptr<uint8_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      dst[(((n / kNR) * (K4 / 4) + k / 4) * kNR + n % kNR) * 4 + k % 4] = (uint8_t)(src[n * K + k] + 128);
  return packed;
}

// a: [M, K4] int8 (K4 a multiple of 4); packed from pack_weight for N outputs; bias: [N] int32 or empty;
// m, e: [1] or [N] int32, to +-qmax; out_bits: bits of the result (int8 for <= 8, else int32). residual: [M, N]
// int8/int32 or empty, with its per-tensor (m_res, e_res). gelu: [5] int64 (clip, c, k, one, r) or empty; then
// m, e take the accumulator to the i-GELU input (qmax) and (m2, e2) its output to out_bits.
torch::Tensor linear(torch::Tensor a, torch::Tensor packed, int64_t N, torch::Tensor bias, torch::Tensor m,
                     torch::Tensor e, int64_t qmax, torch::Tensor residual, torch::Tensor m_res, torch::Tensor e_res,
                     torch::Tensor gelu, torch::Tensor m2, torch::Tensor e2, int64_t out_bits) {
  const int64_t M = a.size(0), K = a.size(1), panels = packed.size(0), Np = panels * kNR;
  TORCH_CHECK(a.is_contiguous() && K % 4 == 0 && packed.size(1) * 4 == K && Np >= N, "linear: a and packed disagree");
  TORCH_CHECK((m.numel() == 1 || m.numel() == N) && m.numel() == e.numel(), "linear: m, e need 1 or N elements");
  auto out = torch::empty({M, N}, a.options().dtype(out_bits <= 8 ? torch::kInt8 : torch::kInt32));
  std::vector<int32_t> comp(M);
  row_compensation(a.data_ptr<int8_t>(), M, K, comp.data());
  std::vector<int64_t> mw = widen(m, N, Np), ew = widen(e, N, Np), half(Np);
  for (int64_t i = 0; i < Np; ++i) half[i] = half_of(ew[i]);
  Epilogue ep{bias.numel() ? bias.data_ptr<int32_t>() : nullptr, mw.data(), half.data(), ew.data(), qmax, out_bits > 8};
  if (residual.numel()) {
    ep.res = residual.data_ptr();
    ep.res_int32 = residual.scalar_type() == torch::kInt32;
    ep.m_res = m_res.data_ptr<int32_t>()[0];
    ep.e_res = e_res.data_ptr<int32_t>()[0];
    ep.half_res = half_of(ep.e_res);
  }
  if (gelu.numel()) {
    TORCH_CHECK(qmax <= 32767, "linear: the i-GELU input must have at most 16 bits");
    const int64_t* g = gelu.data_ptr<int64_t>();
    ep.gelu = true;
    ep.clip = (int32_t)g[0], ep.c = (int32_t)g[1], ep.k = (int32_t)g[2], ep.one = (int32_t)g[3], ep.r = (int32_t)g[4];
    ep.m2 = m2.data_ptr<int32_t>()[0];
    ep.e2 = e2.data_ptr<int32_t>()[0];
    ep.half2 = half_of(ep.e2);
    ep.qmax2 = (int64_t(1) << (out_bits - 1)) - 1;
  }
  const int8_t* ap = a.data_ptr<int8_t>();
  const uint8_t* bp = packed.data_ptr<uint8_t>();
  const int32_t* cp = comp.data();
  void* op = out.data_ptr();
  // Each thread takes an equal share of the micro-tiles' rows (or, with fewer tiles than threads, of the panels)
  // and walks it in blocks of kBlockTiles tiles, each block across all its panels: a block's activations stay in
  // L2 while a panel is reused by every tile of the block.
  const int64_t tiles = (M + kMR - 1) / kMR, threads = at::get_num_threads();
  const bool by_rows = tiles >= threads;
  const int64_t units = by_rows ? tiles : panels;
  at::parallel_for(0, units, (units + threads - 1) / threads, [&](int64_t begin, int64_t end) {
    const int64_t t0 = by_rows ? begin : 0, t1 = by_rows ? end : tiles;
    const int64_t p0 = by_rows ? 0 : begin, p1 = by_rows ? panels : end;
    for (int64_t block = t0; block < t1; block += kBlockTiles)
      for (int64_t p = p0; p < p1; ++p)
        for (int64_t t = block; t < std::min(t1, block + kBlockTiles); ++t)
          tile_rows(std::min(kMR, M - t * kMR), ap, K, bp + p * K * kNR, cp, t * kMR, p * kNR, N, ep, op);
  });
  return out;
}
