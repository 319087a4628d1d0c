// Decode-step attention over the prompt-shared KV cache: a row's query heads of one kv-head against
// its prompt's slots, its filled generated slots and this step's key.
#ifndef GPG_EM_KERNELS_ATTENTION_H_
#define GPG_EM_KERNELS_ATTENTION_H_

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "vec_math.h"

namespace gpg_em_cpu {


struct Dims {
  int64_t L, B, D, H, KVH, Dh, F, V, n, G, P, N, index;
  int64_t Q() const { return H / KVH; }
  int64_t NQKV() const { return (H + 2 * KVH) * Dh; }
};

struct LayerCache {
  const float* prompt_k_t;  // [n, KVH, Dh, P]
  const float* prompt_v;    // [n, KVH, P, Dh]
  const float* gen_k_t;     // [n, KVH, G, Dh, N]
  const float* gen_v;       // [n, KVH, G, N, Dh]
};

// s[q, t] = sum_d query[q, d] k_t[d, t] for R queries and t < count, keys stored [Dh, stride] (slot
// minor). 64 slots per pass: 4 R independent accumulators.
template <int R>
void ScoresSlotMinor(const float* query, int64_t Dh, const float* k_t, int64_t stride, int64_t count, float* s,
                     int64_t lds) {
  for (int64_t t = 0; t < count; t += 64) {
    const __mmask16 m[4] = {FirstN(count - t), FirstN(count - t - 16), FirstN(count - t - 32),
                            FirstN(count - t - 48)};
    __m512 acc[R][4];
    for (int q = 0; q < R; ++q)
      for (int c = 0; c < 4; ++c) acc[q][c] = _mm512_setzero_ps();
    for (int64_t d = 0; d < Dh; ++d) {
      const float* row = k_t + d * stride + t;
      __m512 k[4];
      for (int c = 0; c < 4; ++c) k[c] = _mm512_maskz_loadu_ps(m[c], row + 16 * c);
      for (int q = 0; q < R; ++q) {
        const __m512 a = _mm512_set1_ps(query[q * Dh + d]);
        for (int c = 0; c < 4; ++c) acc[q][c] = _mm512_fmadd_ps(a, k[c], acc[q][c]);
      }
    }
    for (int q = 0; q < R; ++q)
      for (int c = 0; c < 4; ++c) _mm512_mask_storeu_ps(s + q * lds + t + 16 * c, m[c], acc[q][c]);
  }
}

// out[q, d] += sum_t p[q, t] v[t, d] for R queries, t < count, values [count, Dh], 64 dims per pass.
template <int R>
void MixValues(const float* p, int64_t ldp, const float* v, int64_t count, int64_t Dh, float* out) {
  for (int64_t d = 0; d < Dh; d += 64) {
    const __mmask16 m[4] = {FirstN(Dh - d), FirstN(Dh - d - 16), FirstN(Dh - d - 32), FirstN(Dh - d - 48)};
    __m512 acc[R][4];
    for (int q = 0; q < R; ++q)
      for (int c = 0; c < 4; ++c) acc[q][c] = _mm512_maskz_loadu_ps(m[c], out + q * Dh + d + 16 * c);
    for (int64_t t = 0; t < count; ++t) {
      __m512 vv[4];
      for (int c = 0; c < 4; ++c) vv[c] = _mm512_maskz_loadu_ps(m[c], v + t * Dh + d + 16 * c);
      for (int q = 0; q < R; ++q) {
        const __m512 a = _mm512_set1_ps(p[q * ldp + t]);
        for (int c = 0; c < 4; ++c) acc[q][c] = _mm512_fmadd_ps(a, vv[c], acc[q][c]);
      }
    }
    for (int q = 0; q < R; ++q)
      for (int c = 0; c < 4; ++c) _mm512_mask_storeu_ps(out + q * Dh + d + 16 * c, m[c], acc[q][c]);
  }
}

// The two products above for nq queries, in groups of at most 4 (16 accumulators).
inline void Scores(const float* query, int64_t nq, int64_t Dh, const float* k_t, int64_t stride, int64_t count,
                   float* s,
            int64_t lds) {
  for (int64_t q = 0; q < nq; q += 4) {
    const float* qq = query + q * Dh;
    float* sq = s + q * lds;
    switch (std::min<int64_t>(4, nq - q)) {
      case 1: ScoresSlotMinor<1>(qq, Dh, k_t, stride, count, sq, lds); break;
      case 2: ScoresSlotMinor<2>(qq, Dh, k_t, stride, count, sq, lds); break;
      case 3: ScoresSlotMinor<3>(qq, Dh, k_t, stride, count, sq, lds); break;
      default: ScoresSlotMinor<4>(qq, Dh, k_t, stride, count, sq, lds);
    }
  }
}

inline void Mix(const float* p, int64_t nq, int64_t ldp, const float* v, int64_t count, int64_t Dh, float* out) {
  for (int64_t q = 0; q < nq; q += 4) {
    const float* pq = p + q * ldp;
    float* oq = out + q * Dh;
    switch (std::min<int64_t>(4, nq - q)) {
      case 1: MixValues<1>(pq, ldp, v, count, Dh, oq); break;
      case 2: MixValues<2>(pq, ldp, v, count, Dh, oq); break;
      case 3: MixValues<3>(pq, ldp, v, count, Dh, oq); break;
      default: MixValues<4>(pq, ldp, v, count, Dh, oq);
    }
  }
}

// Attention of row b's Q query heads of kv-head kh over [prompt slots ++ generated slots < index ++
// this step's key]: softmax(q.k / sqrt(Dh)) @ v. `prompt_bias` [n, P] is 0 on real prompt slots and
// -inf on padding. Writes out[h Dh + d] for h = kh Q + q. `s` holds Q S floats, S = P + index + 1.
inline void AttendOne(const Dims& dm, const LayerCache& c, const float* prompt_bias, const float* q_row,
               const float* k_new, const float* v_new, int64_t b, int64_t kh, float* s, float* out) {
  const int64_t Q = dm.Q(), Dh = dm.Dh, P = dm.P, T = dm.index, S = P + T + 1;
  const int64_t i = b / dm.G, j = b % dm.G;
  const float* query = q_row + kh * Q * Dh;
  const float* pk = c.prompt_k_t + (i * dm.KVH + kh) * Dh * P;
  const float* pv = c.prompt_v + (i * dm.KVH + kh) * P * Dh;
  const float* gk = c.gen_k_t + ((i * dm.KVH + kh) * dm.G + j) * Dh * dm.N;
  const float* gv = c.gen_v + ((i * dm.KVH + kh) * dm.G + j) * dm.N * Dh;
  Scores(query, Q, Dh, pk, P, P, s, S);
  Scores(query, Q, Dh, gk, dm.N, T, s + P, S);
  Scores(query, Q, Dh, k_new, 1, 1, s + P + T, S);
  const __m512 scale = _mm512_set1_ps(1.0f / std::sqrt(float(Dh)));
  for (int64_t q = 0; q < Q; ++q) {
    float* sq = s + q * S;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t t = 0; t < S; t += 16) {
      const __mmask16 m = FirstN(S - t);
      __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, sq + t), scale);
      const __mmask16 mp = FirstN(P - t);  // prompt slots of this vector
      v = _mm512_mask_add_ps(v, m & mp, v, _mm512_maskz_loadu_ps(m & mp, prompt_bias + i * P + t));
      _mm512_mask_storeu_ps(sq + t, m, v);
      mx = _mm512_mask_max_ps(mx, m, mx, v);
    }
    const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t t = 0; t < S; t += 16) {
      const __mmask16 m = FirstN(S - t);
      const __m512 e = _mm512_maskz_mov_ps(m, Exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sq + t), top)));
      _mm512_mask_storeu_ps(sq + t, m, e);
      sum = _mm512_add_ps(sum, e);
    }
    const __m512 total = _mm512_set1_ps(_mm512_reduce_add_ps(sum));
    for (int64_t t = 0; t < S; t += 16) {
      const __mmask16 m = FirstN(S - t);
      _mm512_mask_storeu_ps(sq + t, m, _mm512_div_ps(_mm512_maskz_loadu_ps(m, sq + t), total));
    }
  }
  float* o = out + kh * Q * Dh;
  std::fill(o, o + Q * Dh, 0.f);
  Mix(s, Q, S, pv, P, Dh, o);
  Mix(s + P, Q, S, gv, T, Dh, o);
  Mix(s + P + T, Q, S, v_new, 1, Dh, o);
}

}  // namespace gpg_em_cpu

#endif  // GPG_EM_KERNELS_ATTENTION_H_
