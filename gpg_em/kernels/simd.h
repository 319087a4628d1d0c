// The decode kernel's 16-float vectors, with one backend chosen at compile time (`-march=native`):
// AVX-512 (one __m512, __mmask16 lane masks) or AVX2 + FMA (two __m256 halves, lanes 0-7 and 8-15,
// with all-ones / all-zeros float lanes as masks). Both compute every lane with the same operations
// in the same order, and the horizontal reductions fold halves the same way, so the kernel's
// results do not depend on the backend beyond what the hardware's own rounding gives.
#ifndef GPG_EM_KERNELS_SIMD_H_
#define GPG_EM_KERNELS_SIMD_H_

#include <immintrin.h>

#include <cstdint>

#if !defined(__AVX512F__) && !(defined(__AVX2__) && defined(__FMA__))
#error "the decode kernel needs AVX-512F or AVX2 + FMA (built with -march=native)"
#endif

namespace gpg_em_cpu {

constexpr int kLanes = 16;  // floats per Vec

// Put before a loop over a register tile's rows or vectors (a Vec array): unrolled before GCC
// decides where arrays live, the tile stays in registers instead of being stored each iteration.
#define GPG_EM_UNROLL _Pragma("GCC unroll 16")

#ifdef __AVX512F__

constexpr const char* kBackend = "avx512";

struct Vec { __m512 v; };
struct Mask { __mmask16 m; };

// Lanes 0 .. n-1 set (none for n <= 0, all for n >= 16).
inline Mask FirstN(int64_t n) {
  return {n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1)};
}

inline Vec Set1(float a) { return {_mm512_set1_ps(a)}; }
inline Vec Zero() { return {_mm512_setzero_ps()}; }
inline Vec Load(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void Store(float* p, Vec a) { _mm512_storeu_ps(p, a.v); }
// The masked lanes of p, zero elsewhere; memory outside the mask is not read.
inline Vec LoadN(Mask m, const float* p) { return {_mm512_maskz_loadu_ps(m.m, p)}; }
// Writes the masked lanes only; memory outside the mask is not touched.
inline void StoreN(float* p, Mask m, Vec a) { _mm512_mask_storeu_ps(p, m.m, a.v); }
// a where masked, zero elsewhere.
inline Vec Keep(Mask m, Vec a) { return {_mm512_maskz_mov_ps(m.m, a.v)}; }
// a where masked, b elsewhere.
inline Vec Select(Mask m, Vec a, Vec b) { return {_mm512_mask_mov_ps(b.v, m.m, a.v)}; }
// Lanes where a >= b (ordered: false for NaN).
inline Mask GreaterEq(Vec a, Vec b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_GE_OQ)}; }

inline Vec Add(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
inline Vec Sub(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline Vec Mul(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline Vec Div(Vec a, Vec b) { return {_mm512_div_ps(a.v, b.v)}; }
inline Vec Max(Vec a, Vec b) { return {_mm512_max_ps(a.v, b.v)}; }
inline Vec Min(Vec a, Vec b) { return {_mm512_min_ps(a.v, b.v)}; }
// a b + c, one rounding.
inline Vec Fmadd(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
// c - a b, one rounding.
inline Vec Fnmadd(Vec a, Vec b, Vec c) { return {_mm512_fnmadd_ps(a.v, b.v, c.v)}; }
// Each lane rounded to the nearest integer (ties to even).
inline Vec RoundNearest(Vec a) {
  return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
}
// a 2^n for integral n in [-126, 128], as one rounding.
inline Vec ScalePow2(Vec a, Vec n) { return {_mm512_scalef_ps(a.v, n.v)}; }

inline float ReduceAdd(Vec a) { return _mm512_reduce_add_ps(a.v); }
inline float ReduceMax(Vec a) { return _mm512_reduce_max_ps(a.v); }

// Fetch the cache line holding p into L2 ahead of its use.
inline void PrefetchL2(const float* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T1); }

#else  // AVX2 + FMA

constexpr const char* kBackend = "avx2";

struct Vec { __m256 lo, hi; };
struct Mask { __m256 lo, hi; };  // a lane is all ones (set) or all zeros

// Lanes 0 .. n-1 set (none for n <= 0, all for n >= 16): lane i is set when i < n.
inline Mask FirstN(int64_t n) {
  const int c = n >= 16 ? 16 : n <= 0 ? 0 : int(n);
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), bound = _mm256_set1_epi32(c);
  const __m256i lo = _mm256_cmpgt_epi32(bound, lanes);
  const __m256i hi = _mm256_cmpgt_epi32(bound, _mm256_add_epi32(lanes, _mm256_set1_epi32(8)));
  return {_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi)};
}

inline Vec Set1(float a) { return {_mm256_set1_ps(a), _mm256_set1_ps(a)}; }
inline Vec Zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline Vec Load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline void Store(float* p, Vec a) { _mm256_storeu_ps(p, a.lo), _mm256_storeu_ps(p + 8, a.hi); }
// The masked lanes of p, zero elsewhere; masked-off lanes are not read (vmaskmovps).
inline Vec LoadN(Mask m, const float* p) {
  return {_mm256_maskload_ps(p, _mm256_castps_si256(m.lo)), _mm256_maskload_ps(p + 8, _mm256_castps_si256(m.hi))};
}
// Writes the masked lanes only; memory outside the mask is not touched. A full half is a plain store:
// vmaskmovps to memory is several times slower on some CPUs (AMD Zen).
inline void StoreHalf(float* p, __m256 m, __m256 a) {
  if (_mm256_movemask_ps(m) == 0xFF)
    _mm256_storeu_ps(p, a);
  else
    _mm256_maskstore_ps(p, _mm256_castps_si256(m), a);
}
inline void StoreN(float* p, Mask m, Vec a) { StoreHalf(p, m.lo, a.lo), StoreHalf(p + 8, m.hi, a.hi); }
// a where masked, zero elsewhere.
inline Vec Keep(Mask m, Vec a) { return {_mm256_and_ps(m.lo, a.lo), _mm256_and_ps(m.hi, a.hi)}; }
// a where masked, b elsewhere.
inline Vec Select(Mask m, Vec a, Vec b) {
  return {_mm256_blendv_ps(b.lo, a.lo, m.lo), _mm256_blendv_ps(b.hi, a.hi, m.hi)};
}
// Lanes where a >= b (ordered: false for NaN).
inline Mask GreaterEq(Vec a, Vec b) {
  return {_mm256_cmp_ps(a.lo, b.lo, _CMP_GE_OQ), _mm256_cmp_ps(a.hi, b.hi, _CMP_GE_OQ)};
}

inline Vec Add(Vec a, Vec b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
inline Vec Sub(Vec a, Vec b) { return {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)}; }
inline Vec Mul(Vec a, Vec b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
inline Vec Div(Vec a, Vec b) { return {_mm256_div_ps(a.lo, b.lo), _mm256_div_ps(a.hi, b.hi)}; }
inline Vec Max(Vec a, Vec b) { return {_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi)}; }
inline Vec Min(Vec a, Vec b) { return {_mm256_min_ps(a.lo, b.lo), _mm256_min_ps(a.hi, b.hi)}; }
// a b + c, one rounding.
inline Vec Fmadd(Vec a, Vec b, Vec c) {
  return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
// c - a b, one rounding.
inline Vec Fnmadd(Vec a, Vec b, Vec c) {
  return {_mm256_fnmadd_ps(a.lo, b.lo, c.lo), _mm256_fnmadd_ps(a.hi, b.hi, c.hi)};
}
// Each lane rounded to the nearest integer (ties to even).
inline Vec RoundNearest(Vec a) {
  constexpr int mode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  return {_mm256_round_ps(a.lo, mode), _mm256_round_ps(a.hi, mode)};
}

// 2^n for integral n in [-126, 127], built in the exponent field: bits (n + 127) << 23.
inline __m256 Pow2(__m256 n) {
  const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
}
// a 2^n for integral n in [-126, 128], as AVX-512's scalef: a 2^min(n, 127) is the one rounding
// (its exponent stays in range); the extra factor 2 for n = 128 is exact unless it overflows.
inline __m256 ScalePow2Half(__m256 a, __m256 n) {
  const __m256 top = _mm256_set1_ps(127.f), n1 = _mm256_min_ps(n, top);
  const __m256 scaled = _mm256_mul_ps(a, Pow2(n1));
  return _mm256_mul_ps(scaled, Pow2(_mm256_sub_ps(n, n1)));
}
inline Vec ScalePow2(Vec a, Vec n) { return {ScalePow2Half(a.lo, n.lo), ScalePow2Half(a.hi, n.hi)}; }

// The 8 lanes folded as _mm512_reduce_add_ps folds its lower and upper 8: halves of 4, then 2, then 1.
inline float ReduceAdd8(__m256 a) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}
inline float ReduceMax8(__m256 a) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}
// Sum / max of the 16 lanes: lanes i and i + 8 first, as the AVX-512 reduction.
inline float ReduceAdd(Vec a) { return ReduceAdd8(_mm256_add_ps(a.lo, a.hi)); }
inline float ReduceMax(Vec a) { return ReduceMax8(_mm256_max_ps(a.lo, a.hi)); }

// Fetch the cache line holding p into L2 ahead of its use. As an asm statement that only reads *p:
// GCC treats _mm_prefetch as touching memory, so in a loop with one it keeps an array of these
// two-half vectors (e.g. a GEMM tile's accumulators) on the stack, stored every iteration.
inline void PrefetchL2(const float* p) { asm("prefetcht1 %0" : : "m"(*reinterpret_cast<const char*>(p))); }

#endif

}  // namespace gpg_em_cpu

#endif  // GPG_EM_KERNELS_SIMD_H_
