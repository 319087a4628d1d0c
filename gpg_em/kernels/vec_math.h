// Vector helpers of the decode kernel on simd.h's 16-float vectors: exp, RMSNorm.
#ifndef GPG_EM_KERNELS_VEC_MATH_H_
#define GPG_EM_KERNELS_VEC_MATH_H_

#include <cmath>
#include <cstdint>

#include "simd.h"

namespace gpg_em_cpu {

// exp(x) as Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-7 polynomial, times 2^n.
// Below -87.3 (and for -inf) the result is 0.
inline Vec Exp(Vec x) {
  const Vec lo = Set1(-87.3f);
  const Mask keep = GreaterEq(x, lo);
  x = Min(Max(x, lo), Set1(88.7f));
  const Vec n = RoundNearest(Mul(x, Set1(1.44269504088896341f)));
  Vec r = Fnmadd(n, Set1(0.693359375f), x);
  r = Fnmadd(n, Set1(-2.12194440e-4f), r);
  Vec p = Set1(1.9875691500e-4f);
  p = Fmadd(p, r, Set1(1.3981999507e-3f));
  p = Fmadd(p, r, Set1(8.3334519073e-3f));
  p = Fmadd(p, r, Set1(4.1665795894e-2f));
  p = Fmadd(p, r, Set1(1.6666665459e-1f));
  p = Fmadd(p, r, Set1(5.0000001201e-1f));
  p = Fmadd(p, Mul(r, r), Add(r, Set1(1.0f)));
  return Keep(keep, ScalePow2(p, n));
}

// y = x * rsqrt(mean(x^2) + eps) * scale over one row of d floats (the decoder's RMSNorm, float32).
inline void RmsNorm(const float* x, const float* scale, int64_t d, float eps, float* y) {
  Vec acc = Zero();
  for (int64_t i = 0; i < d; i += kLanes) {
    const Vec v = LoadN(FirstN(d - i), x + i);
    acc = Fmadd(v, v, acc);
  }
  const float inv = 1.0f / std::sqrt(ReduceAdd(acc) / float(d) + eps);
  for (int64_t i = 0; i < d; ++i) y[i] = (x[i] * inv) * scale[i];
}

}  // namespace gpg_em_cpu

#endif  // GPG_EM_KERNELS_VEC_MATH_H_
