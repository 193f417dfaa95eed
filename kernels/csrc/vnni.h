// Helpers shared by the C++ kernels (x86, AVX-512 VNNI).
#pragma once
#include <immintrin.h>

// acc += u8 x s8 dot products of 4, in place. GCC's _mm512_dpbusd_epi32 copies (and spills) a tile of
// accumulators on every step; the tiles therefore also live in named variables, not arrays.
inline void dpbusd(__m512i& acc, __m512i u8, __m512i s8) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
}
