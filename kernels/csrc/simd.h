// Helpers shared by the C++ kernels (x86: AVX-512 VNNI, and AVX2).
//
// The module is built on every x86-64 host, for the baseline ISA: only the code between IBERT_SIMD_BEGIN and
// IBERT_SIMD_END is compiled for AVX-512 VNNI (IBERT_AVX2_BEGIN/END: AVX2; IBERT_AMX_BEGIN/END: AVX-512 VNNI and
// the AMX tiles), and it is reached only after an op has checked its arguments and the CPU (checks.h). So a CPU
// without those features gets an error that says so, never an illegal instruction.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#define IBERT_SIMD_BEGIN \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx512f,avx512bw,avx512vl,avx512dq,avx512vnni\")")
#define IBERT_SIMD_END _Pragma("GCC pop_options")
#define IBERT_AMX_BEGIN \
  _Pragma("GCC push_options")  \
  _Pragma("GCC target(\"avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,amx-tile,amx-int8\")")
#define IBERT_AMX_END _Pragma("GCC pop_options")
#define IBERT_AVX2_BEGIN _Pragma("GCC push_options") _Pragma("GCC target(\"avx2\")")
#define IBERT_AVX2_END _Pragma("GCC pop_options")

inline int64_t half_of(int64_t e) { return e > 0 ? int64_t(1) << (e - 1) : 0; }

IBERT_SIMD_BEGIN

// acc += u8 x s8 dot products of 4, in place. GCC's _mm512_dpbusd_epi32 copies (and spills) a tile of
// accumulators on every step; the tiles therefore also live in named variables, not arrays.
inline void dpbusd(__m512i& acc, __m512i u8, __m512i s8) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
}

// The lanes n .. n + 15 of a row of N that are below N.
inline __mmask16 below(int64_t n, int64_t N) {
  return n >= N ? 0 : N - n >= 16 ? 0xffff : (__mmask16)((1u << (N - n)) - 1);
}

// The bytes n .. n + 63 of a row of N that are below N.
inline __mmask64 bytes_below(int64_t n, int64_t N) {
  return n >= N ? 0 : N - n >= 64 ? ~0ull : ~0ull >> (64 - (N - n));
}

// Requantization of 16 int32 lanes runs in int64 lanes on the even and the odd lanes apart (vpmuldq multiplies
// the low halves of int64 lanes), which needs no lane shuffles.
inline __m512i odd_lanes(__m512i x) { return _mm512_srli_epi64(x, 32); }

// (x * m + half) >> e in int64 lanes, x and m the low int32 halves of the lanes.
inline __m512i rshift_round(__m512i x, __m512i m, __m512i half, __m512i e) {
  return _mm512_srav_epi64(_mm512_add_epi64(_mm512_mul_epi32(x, m), half), e);
}

// The even and odd lanes' int64 results, clamped to +-qmax, back in 16 int32 lanes.
inline __m512i join_clamp(__m512i even, __m512i odd, int64_t qmax) {
  const __m512i hi = _mm512_set1_epi64(qmax), lo = _mm512_set1_epi64(-qmax);
  even = _mm512_min_epi64(_mm512_max_epi64(even, lo), hi);
  odd = _mm512_min_epi64(_mm512_max_epi64(odd, lo), hi);
  return _mm512_mask_mov_epi32(even, 0xaaaa, _mm512_slli_epi64(odd, 32));
}


IBERT_SIMD_END

// The AVX2 counterparts (8 int32 lanes) of the helpers above.
namespace avx2 {

IBERT_AVX2_BEGIN

inline __m256i odd_lanes(__m256i x) { return _mm256_srli_epi64(x, 32); }

// (x * m + half) >> e in int64 lanes, x and m the low int32 halves of the lanes. AVX2 shifts int64 lanes only
// logically: with u = v + 2**63 (as unsigned), v >> e = (u >> e) - 2**(63 - e).
inline __m256i rshift_round(__m256i x, __m256i m, __m256i half, __m256i e) {
  const __m256i top = _mm256_set1_epi64x(INT64_MIN);
  const __m256i v = _mm256_add_epi64(_mm256_mul_epi32(x, m), half);
  return _mm256_sub_epi64(_mm256_srlv_epi64(_mm256_xor_si256(v, top), e), _mm256_srlv_epi64(top, e));
}

inline __m256i clamp64(__m256i v, __m256i lo, __m256i hi) {
  v = _mm256_blendv_epi8(v, lo, _mm256_cmpgt_epi64(lo, v));
  return _mm256_blendv_epi8(v, hi, _mm256_cmpgt_epi64(v, hi));
}

// The even and odd lanes' int64 results, clamped to +-qmax, back in 8 int32 lanes.
inline __m256i join_clamp(__m256i even, __m256i odd, int64_t qmax) {
  const __m256i hi = _mm256_set1_epi64x(qmax), lo = _mm256_set1_epi64x(-qmax);
  return _mm256_blend_epi32(clamp64(even, lo, hi), _mm256_slli_epi64(clamp64(odd, lo, hi), 32), 0xaa);
}

// All ones in the lanes n .. n + 7 of a row of N that are below N.
inline __m256i below(int64_t n, int64_t N) {
  const int32_t left = int32_t(std::min<int64_t>(std::max<int64_t>(N - n, 0), 8));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

inline int32_t reduce_max(__m256i v) {
  __m128i m = _mm_max_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0x4e));
  return _mm_cvtsi128_si32(_mm_max_epi32(m, _mm_shuffle_epi32(m, 0xb1)));
}

inline int32_t reduce_add(__m256i v) {
  __m128i m = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_add_epi32(m, _mm_shuffle_epi32(m, 0x4e));
  return _mm_cvtsi128_si32(_mm_add_epi32(m, _mm_shuffle_epi32(m, 0xb1)));
}

// n <= 8 values as 8 int32 lanes (0 past n), and 8 lanes stored to n values (the int8 ones within int8).
inline __m256i load8(const int32_t* p, int64_t n) {
  if (n == 8) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  alignas(32) int32_t t[8] = {};
  std::memcpy(t, p, 4 * n);
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(t));
}
inline __m256i load8(const int8_t* p, int64_t n) {
  int64_t v = 0;
  std::memcpy(&v, p, n);
  return _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(v));
}
inline void store8(int32_t* p, __m256i v, int64_t n) {
  if (n == 8) return _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
  alignas(32) int32_t t[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), v);
  std::memcpy(p, t, 4 * n);
}
inline void store8(int8_t* p, __m256i v, int64_t n) {
  const __m256i low_bytes = _mm256_shuffle_epi8(v, _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1,
      -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
  const __m256i joined = _mm256_permutevar8x32_epi32(low_bytes, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
  const int64_t bytes = _mm_cvtsi128_si64(_mm256_castsi256_si128(joined));
  std::memcpy(p, &bytes, n);
}

IBERT_AVX2_END

}  // namespace avx2
