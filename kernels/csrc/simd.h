// Helpers shared by the C++ kernels (x86: AVX-512 VNNI, and AVX2 for linear).
//
// The module is built on every x86-64 host, for the baseline ISA: only the code between IBERT_SIMD_BEGIN and
// IBERT_SIMD_END is compiled for AVX-512 VNNI (IBERT_AVX2_BEGIN/END: AVX2), and it is reached only after an op has
// checked its arguments and the CPU (checks.h). So a CPU without those features gets an error that says so, never an
// illegal instruction.
#pragma once
#include <immintrin.h>

#include <cstdint>

#define IBERT_SIMD_BEGIN \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx512f,avx512bw,avx512vl,avx512dq,avx512vnni\")")
#define IBERT_SIMD_END _Pragma("GCC pop_options")
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
