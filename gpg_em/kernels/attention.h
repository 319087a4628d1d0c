// Decode-step attention over the prompt-shared KV cache: a row's query heads of one kv-head against
// its prompt's slots, its filled generated slots and this step's key.
#ifndef GPG_EM_KERNELS_ATTENTION_H_
#define GPG_EM_KERNELS_ATTENTION_H_

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "vec_math.h"

namespace gpg_em_cpu {


struct Dims {
  int64_t L, B, D, H, KVH, Dh, F, V, n, G, P, C, T, index;  // C blocks of T generated slots; index: the
                                                            // largest row's (scratch sizes)
  const int32_t* row_index = nullptr;  // [B] per-row generated slots (continuous batching), or null
  int64_t Index(int64_t b) const { return row_index ? row_index[b] : index; }
  int64_t Q() const { return H / KVH; }
  int64_t NQKV() const { return (H + 2 * KVH) * Dh; }
};

struct LayerCache {
  const float* prompt_k_t;  // [n, KVH, Dh, P]
  const float* prompt_v;    // [n, KVH, P, Dh]
  const float* gen_k_t;     // [C, n, KVH, G, Dh, T]: generated slot t is slot t % T of block t / T
  const float* gen_v;       // [C, n, KVH, G, T, Dh]
};

// Queries per group and 16-float vectors per pass of the two products below: R C accumulators plus C
// loaded vectors must fit the register file (32 zmm; AVX2: 16 ymm, two per vector).
#ifdef __AVX512F__
constexpr int kAttnRows = 4, kAttnVecs = 4;
#else
constexpr int kAttnRows = 4, kAttnVecs = 1;
#endif
constexpr int64_t kAttnSpan = kAttnVecs * kLanes;  // slots (Scores) or dims (Mix) per pass

// s[q, t] = sum_d query[q, d] k_t[d, t] for R queries and t < count, keys stored [Dh, stride] (slot
// minor). kAttnSpan slots per pass: R kAttnVecs independent accumulators, d in order.
template <int R>
void ScoresSlotMinor(const float* query, int64_t Dh, const float* k_t, int64_t stride, int64_t count, float* s,
                     int64_t lds) {
  constexpr int C = kAttnVecs;
  for (int64_t t = 0; t < count; t += kAttnSpan) {
    Mask m[C];
    GPG_EM_UNROLL for (int c = 0; c < C; ++c) m[c] = FirstN(count - t - kLanes * c);
    Vec acc[R][C];
    GPG_EM_UNROLL for (int q = 0; q < R; ++q)
      GPG_EM_UNROLL for (int c = 0; c < C; ++c) acc[q][c] = Zero();
    for (int64_t d = 0; d < Dh; ++d) {
      const float* row = k_t + d * stride + t;
      Vec k[C];
      GPG_EM_UNROLL for (int c = 0; c < C; ++c) k[c] = LoadN(m[c], row + kLanes * c);
      GPG_EM_UNROLL for (int q = 0; q < R; ++q) {
        const Vec a = Set1(query[q * Dh + d]);
        GPG_EM_UNROLL for (int c = 0; c < C; ++c) acc[q][c] = Fmadd(a, k[c], acc[q][c]);
      }
    }
    GPG_EM_UNROLL for (int q = 0; q < R; ++q)
      GPG_EM_UNROLL for (int c = 0; c < C; ++c) StoreN(s + q * lds + t + kLanes * c, m[c], acc[q][c]);
  }
}

// out[q, d] += sum_t p[q, t] v[t, d] for R queries, t < count (in order), values [count, Dh],
// kAttnSpan dims per pass.
template <int R>
void MixValues(const float* p, int64_t ldp, const float* v, int64_t count, int64_t Dh, float* out) {
  constexpr int C = kAttnVecs;
  for (int64_t d = 0; d < Dh; d += kAttnSpan) {
    Mask m[C];
    GPG_EM_UNROLL for (int c = 0; c < C; ++c) m[c] = FirstN(Dh - d - kLanes * c);
    Vec acc[R][C];
    GPG_EM_UNROLL for (int q = 0; q < R; ++q)
      GPG_EM_UNROLL for (int c = 0; c < C; ++c) acc[q][c] = LoadN(m[c], out + q * Dh + d + kLanes * c);
    for (int64_t t = 0; t < count; ++t) {
      Vec vv[C];
      GPG_EM_UNROLL for (int c = 0; c < C; ++c) vv[c] = LoadN(m[c], v + t * Dh + d + kLanes * c);
      GPG_EM_UNROLL for (int q = 0; q < R; ++q) {
        const Vec a = Set1(p[q * ldp + t]);
        GPG_EM_UNROLL for (int c = 0; c < C; ++c) acc[q][c] = Fmadd(a, vv[c], acc[q][c]);
      }
    }
    GPG_EM_UNROLL for (int q = 0; q < R; ++q)
      GPG_EM_UNROLL for (int c = 0; c < C; ++c) StoreN(out + q * Dh + d + kLanes * c, m[c], acc[q][c]);
  }
}

static_assert(kAttnRows == 4, "Scores and Mix dispatch groups of up to 4 queries");

// The two products above for nq queries, in groups of at most kAttnRows.
inline void Scores(const float* query, int64_t nq, int64_t Dh, const float* k_t, int64_t stride, int64_t count,
                   float* s, int64_t lds) {
  for (int64_t q = 0; q < nq; q += kAttnRows) {
    const float* qq = query + q * Dh;
    float* sq = s + q * lds;
    switch (std::min<int64_t>(kAttnRows, nq - q)) {
      case 1: ScoresSlotMinor<1>(qq, Dh, k_t, stride, count, sq, lds); break;
      case 2: ScoresSlotMinor<2>(qq, Dh, k_t, stride, count, sq, lds); break;
      case 3: ScoresSlotMinor<3>(qq, Dh, k_t, stride, count, sq, lds); break;
      default: ScoresSlotMinor<4>(qq, Dh, k_t, stride, count, sq, lds);
    }
  }
}

inline void Mix(const float* p, int64_t nq, int64_t ldp, const float* v, int64_t count, int64_t Dh, float* out) {
  for (int64_t q = 0; q < nq; q += kAttnRows) {
    const float* pq = p + q * ldp;
    float* oq = out + q * Dh;
    switch (std::min<int64_t>(kAttnRows, nq - q)) {
      case 1: MixValues<1>(pq, ldp, v, count, Dh, oq); break;
      case 2: MixValues<2>(pq, ldp, v, count, Dh, oq); break;
      case 3: MixValues<3>(pq, ldp, v, count, Dh, oq); break;
      default: MixValues<4>(pq, ldp, v, count, Dh, oq);
    }
  }
}

// One query's scores s[0, S) scaled by `scale`, plus `bias` on the first P (< S) slots, replaced by
// their softmax: exp(s - max s) / sum.
inline void Softmax(float* sq, int64_t S, float scale, const float* bias, int64_t P) {
  Vec mx = Set1(-INFINITY);
  for (int64_t t = 0; t < S; t += kLanes) {
    const Mask m = FirstN(S - t), mp = FirstN(P - t);  // slots of this vector; its prompt slots
    Vec v = Mul(LoadN(m, sq + t), Set1(scale));
    v = Select(mp, Add(v, LoadN(mp, bias + t)), v);
    StoreN(sq + t, m, v);
    mx = Select(m, Max(mx, v), mx);
  }
  const Vec top = Set1(ReduceMax(mx));
  Vec sum = Zero();
  for (int64_t t = 0; t < S; t += kLanes) {
    const Mask m = FirstN(S - t);
    const Vec e = Keep(m, Exp(Sub(LoadN(m, sq + t), top)));
    StoreN(sq + t, m, e);
    sum = Add(sum, e);
  }
  const Vec total = Set1(ReduceAdd(sum));
  for (int64_t t = 0; t < S; t += kLanes) {
    const Mask m = FirstN(S - t);
    StoreN(sq + t, m, Div(LoadN(m, sq + t), total));
  }
}

// Attention of row b's Q query heads of kv-head kh over [prompt slots ++ generated slots < index(b) ++
// this step's key]: softmax(q.k / sqrt(Dh)) @ v. `prompt_bias` [n, P] is 0 on real prompt slots and
// -inf on padding. Writes out[h Dh + d] for h = kh Q + q. `s` holds Q S floats, S = P + index(b) + 1.
inline void AttendOne(const Dims& dm, const LayerCache& c, const float* prompt_bias, const float* q_row,
                      const float* k_new, const float* v_new, int64_t b, int64_t kh, float* s, float* out) {
  const int64_t Q = dm.Q(), Dh = dm.Dh, P = dm.P, filled = dm.Index(b), S = P + filled + 1;
  const int64_t i = b / dm.G, j = b % dm.G;
  const float* query = q_row + kh * Q * Dh;
  const float* pk = c.prompt_k_t + (i * dm.KVH + kh) * Dh * P;
  const float* pv = c.prompt_v + (i * dm.KVH + kh) * P * Dh;
  // this row's block 0; block k is `block` floats further on
  const int64_t row_at = ((i * dm.KVH + kh) * dm.G + j) * Dh * dm.T, block = dm.n * dm.KVH * dm.G * Dh * dm.T;
  Scores(query, Q, Dh, pk, P, P, s, S);
  for (int64_t t0 = 0, k = 0; t0 < filled; t0 += dm.T, ++k)
    Scores(query, Q, Dh, c.gen_k_t + k * block + row_at, dm.T, std::min(dm.T, filled - t0), s + P + t0, S);
  Scores(query, Q, Dh, k_new, 1, 1, s + P + filled, S);
  const float scale = 1.0f / std::sqrt(float(Dh));
  for (int64_t q = 0; q < Q; ++q) Softmax(s + q * S, S, scale, prompt_bias + i * P, P);
  float* o = out + kh * Q * Dh;
  std::fill(o, o + Q * Dh, 0.f);
  Mix(s, Q, S, pv, P, Dh, o);
  for (int64_t t0 = 0, k = 0; t0 < filled; t0 += dm.T, ++k)
    Mix(s + P + t0, Q, S, c.gen_v + k * block + row_at, std::min(dm.T, filled - t0), Dh, o);
  Mix(s + P + filled, Q, S, v_new, 1, Dh, o);
}

}  // namespace gpg_em_cpu

#endif  // GPG_EM_KERNELS_ATTENTION_H_
