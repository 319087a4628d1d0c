// One decode step (one new token per row) of a pre-norm RoPE decoder with grouped-query attention
// (Llama / Qwen2 / Qwen3), float32, as an XLA:CPU FFI custom call. Same mathematics as
// gpg_em/rollout/decode_step.py (`step_hidden` + `step_logits`), which the tests compare it with.
//
// Why a kernel: at decode batch sizes (B <= 32 rows) every product is a skinny [B, K] x [K, N] GEMM
// whose weights stream from memory once per step. XLA:CPU repacks each weight on every call and runs
// these at ~100 GFLOP/s on two cores, and each small op (norms, RoPE, residuals) costs a thunk
// dispatch. Here the weights are packed once (`Packed`, below) and every layer runs in one call.
//
// Weight layout ("packed"): a [K, N] kernel (x @ W) is stored as ceil(N / 48) panels [K, 48],
// columns zero-padded: packed[p, k, c] = W[k, 48 p + c]. A panel's k-th row is three AVX-512
// vectors, so the inner loop is 3 loads + 3 R fused multiply-adds for R rows of x.
//
// Operands (L layers, B = n G rows prompt-major, D model width, H/KVH heads, Dh head dim, F MLP
// width, V vocabulary, P prompt slots, N generated slots):
//   x [B, D] embedded tokens; cos, sin [B, Dh]; prompt_mask [n, P] int32; index [] int32 (the slot
//   this step's key/value go to: generated slots < index are filled);
//   in_norm, post_norm [L, D]; final_norm [D]; w_qkv packed [L, *, D, 48] of [q | k | v] (H Dh +
//   2 KVH Dh columns) and b_qkv [L, H Dh + 2 KVH Dh]; w_o packed [L, *, H Dh, 48]; w_gu packed
//   [L, *, D, 48] of [gate | up] (2 F columns); w_down packed [L, *, F, 48]; w_head packed [*, D, 48];
//   q_norm, k_norm [L, Dh] (used when the attribute qk_norm is 1);
//   then per layer the cache: prompt_k_t [n, KVH, Dh, P], prompt_v [n, KVH, P, Dh],
//   gen_k_t [n, KVH, G, Dh, N], gen_v [n, KVH, G, N, Dh].
// Results: logits [B, V]; k_new, v_new [L, n, KVH, G, Dh] (RoPE applied to k), which the caller
// writes at generated slot `index` of each layer's cache.
#include <immintrin.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kPanel = 48;   // packed panel width: three 16-float vectors
constexpr int64_t kChunk = 64;   // k rows of a panel used by all row blocks while they sit in L1
constexpr int64_t kAhead = 128;  // software prefetch distance, in panel rows (24 KiB)
constexpr int kSpin = 4000;      // pause instructions a worker spins before it sleeps (~0.2-0.5 ms)

// ------------------------------------------------------------------ threads

// T - 1 persistent workers plus the calling thread. `For(n, body)` runs body(begin, end) on T
// contiguous parts of [0, n) and returns when all are done. Workers spin briefly between calls
// (a step issues ~5 per layer back to back), then sleep, so XLA's own threads get the cores back.
class Pool {
 public:
  explicit Pool(int threads) : threads_(std::max(1, threads)) {
    for (int t = 1; t < threads_; ++t) std::thread([this, t] { Work(t); }).detach();
  }
  int threads() const { return threads_; }

  template <typename F>
  void For(int64_t n, F&& body) {
    if (threads_ == 1 || n < 2) {
      body(int64_t{0}, n);
      return;
    }
    using Body = std::remove_reference_t<F>;
    job_ = [](void* ctx, int64_t b, int64_t e) { (*static_cast<Body*>(ctx))(b, e); };
    ctx_ = &body;
    n_ = n;
    pending_.store(threads_ - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mu_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    Run(0);
    while (pending_.load(std::memory_order_acquire) != 0) _mm_pause();
  }

 private:
  void Run(int t) {
    int64_t b = n_ * t / threads_, e = n_ * (t + 1) / threads_;
    if (b < e) job_(ctx_, b, e);
  }
  void Work(int t) {
    uint64_t seen = 0;
    for (;;) {
      for (int i = 0; i < kSpin && generation_.load(std::memory_order_acquire) == seen; ++i) _mm_pause();
      if (generation_.load(std::memory_order_acquire) == seen) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      }
      seen = generation_.load(std::memory_order_acquire);
      Run(t);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  const int threads_;
  void (*job_)(void*, int64_t, int64_t) = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::mutex mu_;
  std::condition_variable cv_;
};

int DefaultThreads() {
  if (const char* env = std::getenv("GPG_EM_CPU_THREADS")) return std::max(1, std::atoi(env));
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// The process's pool, made on first use. A forked child has none of its parent's threads, so a
// process whose pid changed makes its own (the parent's pool object is left as it is).
Pool& GetPool() {
  static Pool* pool = nullptr;  // never destroyed: its threads are detached
  static pid_t owner = 0;
  if (pool == nullptr || owner != getpid()) {
    pool = new Pool(DefaultThreads());
    owner = getpid();
  }
  return *pool;
}

// ------------------------------------------------------------------ vector math

inline __mmask16 FirstN(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// exp(x) as Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-7 polynomial, times 2^n.
// Below -87.3 (and for -inf) the result is 0.
inline __m512 Exp(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.3f);
  const __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, lo), _mm512_set1_ps(88.7f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(p, n));
}

// y = x * rsqrt(mean(x^2) + eps) * scale over one row of d floats (the decoder's RMSNorm, float32).
void RmsNorm(const float* x, const float* scale, int64_t d, float eps, float* y) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < d; i += 16) {
    __m512 v = _mm512_maskz_loadu_ps(FirstN(d - i), x + i);
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  const float inv = 1.0f / std::sqrt(_mm512_reduce_add_ps(acc) / float(d) + eps);
  for (int64_t i = 0; i < d; ++i) y[i] = (x[i] * inv) * scale[i];
}

// ------------------------------------------------------------------ packed GEMM

// R rows of y[:, panel] (+)= x[:, k0:k1] @ panel[k0:k1]; `cols` (<= 48) of the panel's columns are real.
template <int R>
inline void Tile(const float* x, int64_t ldx, const float* panel, int64_t k0, int64_t k1, float* y,
                 int64_t ldy, int64_t cols, bool first) {
  const __mmask16 m[3] = {FirstN(cols), FirstN(cols - 16), FirstN(cols - 32)};
  __m512 acc[R][3];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 3; ++c)
      acc[r][c] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m[c], y + r * ldy + 16 * c);
  for (int64_t k = k0; k < k1; ++k) {
    const float* w = panel + k * kPanel;
    _mm_prefetch(reinterpret_cast<const char*>(w + kAhead * kPanel), _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char*>(w + kAhead * kPanel + 16), _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char*>(w + kAhead * kPanel + 32), _MM_HINT_T1);
    const __m512 b0 = _mm512_loadu_ps(w), b1 = _mm512_loadu_ps(w + 16), b2 = _mm512_loadu_ps(w + 32);
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(x[r * ldx + k]);
      acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(a, b2, acc[r][2]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 3; ++c) _mm512_mask_storeu_ps(y + r * ldy + 16 * c, m[c], acc[r][c]);
}

// y[M, N] = x[M, K] @ W for W packed as ceil(N / 48) panels [K, 48]; panels split over the pool.
void Gemm(const float* x, int64_t M, int64_t K, const float* packed, int64_t N, float* y) {
  const int64_t panels = (N + kPanel - 1) / kPanel;
  GetPool().For(panels, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float* panel = packed + p * K * kPanel;
      const int64_t cols = std::min(kPanel, N - p * kPanel);
      float* yp = y + p * kPanel;
      for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
        const int64_t k1 = std::min(K, k0 + kChunk);
        int64_t m = 0;
        for (; m + 8 <= M; m += 8) Tile<8>(x + m * K, K, panel, k0, k1, yp + m * N, N, cols, k0 == 0);
        if (m + 4 <= M) Tile<4>(x + m * K, K, panel, k0, k1, yp + m * N, N, cols, k0 == 0), m += 4;
        if (m + 2 <= M) Tile<2>(x + m * K, K, panel, k0, k1, yp + m * N, N, cols, k0 == 0), m += 2;
        if (m < M) Tile<1>(x + m * K, K, panel, k0, k1, yp + m * N, N, cols, k0 == 0);
      }
    }
  });
}

// ------------------------------------------------------------------ attention

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
void Scores(const float* query, int64_t nq, int64_t Dh, const float* k_t, int64_t stride, int64_t count, float* s,
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

void Mix(const float* p, int64_t nq, int64_t ldp, const float* v, int64_t count, int64_t Dh, float* out) {
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
void AttendOne(const Dims& dm, const LayerCache& c, const float* prompt_bias, const float* q_row,
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

// ------------------------------------------------------------------ one layer

struct LayerWeights {
  const float *in_norm, *post_norm, *w_qkv, *b_qkv, *w_o, *w_gu, *w_down, *q_norm, *k_norm;
};

// x[Dh] * cos + rotate_half(x) * sin, rotate_half(x) = [-x[Dh/2:], x[:Dh/2]].
void Rope(float* x, const float* cos, const float* sin, int64_t Dh) {
  const int64_t half = Dh / 2;
  float tmp[512];
  for (int64_t d = 0; d < Dh; ++d) tmp[d] = x[d] * cos[d] + (d < half ? -x[d + half] : x[d - half]) * sin[d];
  std::copy(tmp, tmp + Dh, x);
}

struct Scratch {
  std::vector<float> h, qkv, attn, gu, act, o, scores;
};

void Layer(const Dims& dm, const LayerWeights& w, const LayerCache& c, const float* cos, const float* sin,
           const float* prompt_bias, float eps, bool qk_norm, float* x, float* k_new, float* v_new,
           Scratch& sc) {
  const int64_t B = dm.B, D = dm.D, H = dm.H, KVH = dm.KVH, Dh = dm.Dh, F = dm.F, NQKV = dm.NQKV();
  Pool& pool = GetPool();
  pool.For(B, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) RmsNorm(x + b * D, w.in_norm, D, eps, sc.h.data() + b * D);
  });
  Gemm(sc.h.data(), B, D, w.w_qkv, NQKV, sc.qkv.data());
  pool.For(B, [&](int64_t b0, int64_t b1) {  // bias, q/k norm, RoPE; this step's key/value out
    for (int64_t b = b0; b < b1; ++b) {
      float* row = sc.qkv.data() + b * NQKV;
      for (int64_t f = 0; f < NQKV; ++f) row[f] += w.b_qkv[f];
      for (int64_t hd = 0; hd < H + KVH; ++hd) {  // q heads then k heads
        float* head = row + hd * Dh;
        if (qk_norm) RmsNorm(head, hd < H ? w.q_norm : w.k_norm, Dh, eps, head);
        Rope(head, cos + b * Dh, sin + b * Dh, Dh);
      }
      const int64_t i = b / dm.G, j = b % dm.G;
      for (int64_t kh = 0; kh < KVH; ++kh) {  // in the cache's [n, KVH, G, Dh] order
        const int64_t at = ((i * KVH + kh) * dm.G + j) * Dh;
        std::copy(row + (H + kh) * Dh, row + (H + kh + 1) * Dh, k_new + at);
        std::copy(row + (H + KVH + kh) * Dh, row + (H + KVH + kh + 1) * Dh, v_new + at);
      }
    }
  });
  const int64_t S = dm.P + dm.index + 1;
  // Tasks in the cache's (prompt, kv-head, sample) order, so consecutive tasks read consecutive blocks.
  pool.For(B * KVH, [&](int64_t t0, int64_t t1) {
    std::vector<float> s(dm.Q() * S);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t / (KVH * dm.G), kh = t / dm.G % KVH, j = t % dm.G, b = i * dm.G + j;
      const int64_t at = t * Dh;
      AttendOne(dm, c, prompt_bias, sc.qkv.data() + b * NQKV, k_new + at, v_new + at, b, kh, s.data(),
                sc.attn.data() + b * H * Dh);
    }
  });
  Gemm(sc.attn.data(), B, H * Dh, w.w_o, D, sc.o.data());
  pool.For(B, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t d = 0; d < D; ++d) x[b * D + d] += sc.o[b * D + d];
      RmsNorm(x + b * D, w.post_norm, D, eps, sc.h.data() + b * D);
    }
  });
  Gemm(sc.h.data(), B, D, w.w_gu, 2 * F, sc.gu.data());
  pool.For(B, [&](int64_t b0, int64_t b1) {  // silu(gate) * up
    for (int64_t b = b0; b < b1; ++b) {
      const float* g = sc.gu.data() + b * 2 * F;
      float* a = sc.act.data() + b * F;
      for (int64_t f = 0; f < F; f += 16) {
        const __mmask16 m = FirstN(F - f);
        const __m512 gv = _mm512_maskz_loadu_ps(m, g + f), uv = _mm512_maskz_loadu_ps(m, g + F + f);
        const __m512 sig = _mm512_div_ps(_mm512_set1_ps(1.f),
                                         _mm512_add_ps(_mm512_set1_ps(1.f), Exp(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
        _mm512_mask_storeu_ps(a + f, m, _mm512_mul_ps(_mm512_mul_ps(gv, sig), uv));
      }
    }
  });
  Gemm(sc.act.data(), B, F, w.w_down, D, sc.o.data());
  pool.For(B * D, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) x[i] += sc.o[i];
  });
}

ffi::Error Fail(const std::string& what) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, "gpg_em decode_cpu: " + what);
}

ffi::Error DecodeStep(ffi::Buffer<ffi::F32> x_in, ffi::Buffer<ffi::F32> cos, ffi::Buffer<ffi::F32> sin,
                      ffi::Buffer<ffi::S32> prompt_mask, ffi::Buffer<ffi::S32> index,
                      ffi::Buffer<ffi::F32> in_norm, ffi::Buffer<ffi::F32> post_norm,
                      ffi::Buffer<ffi::F32> final_norm, ffi::Buffer<ffi::F32> w_qkv, ffi::Buffer<ffi::F32> b_qkv,
                      ffi::Buffer<ffi::F32> w_o, ffi::Buffer<ffi::F32> w_gu, ffi::Buffer<ffi::F32> w_down,
                      ffi::Buffer<ffi::F32> w_head, ffi::Buffer<ffi::F32> q_norm, ffi::Buffer<ffi::F32> k_norm,
                      ffi::RemainingArgs caches, ffi::ResultBuffer<ffi::F32> logits,
                      ffi::ResultBuffer<ffi::F32> k_new, ffi::ResultBuffer<ffi::F32> v_new, int64_t num_heads,
                      int64_t num_kv_heads, int64_t intermediate_size, float eps, int64_t qk_norm) {
  static std::mutex call_mu;  // one step at a time: the pool and its scratch are shared
  std::lock_guard<std::mutex> call_lock(call_mu);
  Dims dm{};
  dm.B = x_in.dimensions()[0];
  dm.D = x_in.dimensions()[1];
  dm.H = num_heads;
  dm.KVH = num_kv_heads;
  dm.Dh = cos.dimensions()[1];
  dm.F = intermediate_size;
  dm.L = in_norm.dimensions()[0];
  dm.V = logits->dimensions()[1];
  dm.n = prompt_mask.dimensions()[0];
  dm.P = prompt_mask.dimensions()[1];
  if (dm.n <= 0 || dm.B % dm.n) return Fail("rows B must be a multiple of the prompts n");
  dm.G = dm.B / dm.n;
  if (dm.Dh > 512) return Fail("head_dim must be at most 512");
  if (dm.H % dm.KVH) return Fail("num_heads must be a multiple of num_kv_heads");
  if (caches.size() != size_t(4 * dm.L)) return Fail("expected 4 cache arrays per layer");
  auto first_cache = caches.get<ffi::Buffer<ffi::F32>>(2);
  if (first_cache.has_error()) return first_cache.error();
  dm.N = first_cache.value().dimensions()[4];
  dm.index = index.typed_data()[0];
  if (dm.index < 0 || dm.index >= dm.N) return Fail("index outside the generated slots");
  const auto panels = [](int64_t n) { return (n + kPanel - 1) / kPanel; };
  const int64_t L = dm.L, D = dm.D, HDh = dm.H * dm.Dh;
  const struct {
    const char* name;
    size_t have;
    int64_t want;
  } sizes[] = {
      {"post_norm", post_norm.element_count(), L * D},
      {"final_norm", final_norm.element_count(), D},
      {"w_qkv", w_qkv.element_count(), L * panels(dm.NQKV()) * D * kPanel},
      {"b_qkv", b_qkv.element_count(), L * dm.NQKV()},
      {"w_o", w_o.element_count(), L * panels(D) * HDh * kPanel},
      {"w_gu", w_gu.element_count(), L * panels(2 * dm.F) * D * kPanel},
      {"w_down", w_down.element_count(), L * panels(D) * dm.F * kPanel},
      {"w_head", w_head.element_count(), panels(dm.V) * D * kPanel},
      {"q_norm", q_norm.element_count(), L * dm.Dh},
      {"k_norm", k_norm.element_count(), L * dm.Dh},
      {"cos", cos.element_count(), dm.B * dm.Dh},
      {"sin", sin.element_count(), dm.B * dm.Dh},
      {"in_norm", in_norm.element_count(), L * D},
  };
  for (const auto& s : sizes)
    if (int64_t(s.have) != s.want)
      return Fail(std::string(s.name) + " has " + std::to_string(s.have) + " elements, expected " +
                  std::to_string(s.want) + " for these model dimensions");
  const int64_t cache_sizes[4] = {dm.n * dm.KVH * dm.Dh * dm.P, dm.n * dm.KVH * dm.P * dm.Dh,
                                  dm.B * dm.KVH * dm.Dh * dm.N, dm.B * dm.KVH * dm.N * dm.Dh};
  for (int64_t a = 0; a < 4 * L; ++a) {
    auto buf = caches.get<ffi::Buffer<ffi::F32>>(a);
    if (buf.has_error()) return buf.error();
    if (int64_t(buf.value().element_count()) != cache_sizes[a % 4])
      return Fail("cache array " + std::to_string(a % 4) + " of layer " + std::to_string(a / 4) +
                  " has the wrong size for these model dimensions");
  }

  std::vector<float> x(x_in.typed_data(), x_in.typed_data() + dm.B * dm.D);
  static Scratch sc;
  sc.h.resize(dm.B * std::max(dm.D, dm.H * dm.Dh));
  sc.qkv.resize(dm.B * dm.NQKV());
  sc.attn.resize(dm.B * dm.H * dm.Dh);
  sc.gu.resize(dm.B * 2 * dm.F);
  sc.act.resize(dm.B * dm.F);
  sc.o.resize(dm.B * dm.D);

  std::vector<float> prompt_bias(dm.n * dm.P);
  for (int64_t t = 0; t < dm.n * dm.P; ++t) prompt_bias[t] = prompt_mask.typed_data()[t] ? 0.f : -INFINITY;
  const int64_t per_layer_kv = dm.B * dm.KVH * dm.Dh;
  for (int64_t l = 0; l < dm.L; ++l) {
    LayerCache c{};
    const float** slots[4] = {&c.prompt_k_t, &c.prompt_v, &c.gen_k_t, &c.gen_v};
    for (int a = 0; a < 4; ++a) {
      auto buf = caches.get<ffi::Buffer<ffi::F32>>(4 * l + a);
      if (buf.has_error()) return buf.error();
      *slots[a] = buf.value().typed_data();
    }
    LayerWeights w{in_norm.typed_data() + l * dm.D,
                   post_norm.typed_data() + l * dm.D,
                   w_qkv.typed_data() + l * panels(dm.NQKV()) * dm.D * kPanel,
                   b_qkv.typed_data() + l * dm.NQKV(),
                   w_o.typed_data() + l * panels(dm.D) * dm.H * dm.Dh * kPanel,
                   w_gu.typed_data() + l * panels(2 * dm.F) * dm.D * kPanel,
                   w_down.typed_data() + l * panels(dm.D) * dm.F * kPanel,
                   q_norm.typed_data() + l * dm.Dh,
                   k_norm.typed_data() + l * dm.Dh};
    Layer(dm, w, c, cos.typed_data(), sin.typed_data(), prompt_bias.data(), eps, qk_norm != 0,
          x.data(), k_new->typed_data() + l * per_layer_kv, v_new->typed_data() + l * per_layer_kv, sc);
  }
  for (int64_t b = 0; b < dm.B; ++b) RmsNorm(x.data() + b * dm.D, final_norm.typed_data(), dm.D, eps, sc.h.data() + b * dm.D);
  Gemm(sc.h.data(), dm.B, dm.D, w_head.typed_data(), dm.V, logits->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GpgEmDecodeStep, DecodeStep,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x
                                  .Arg<ffi::Buffer<ffi::F32>>()   // cos
                                  .Arg<ffi::Buffer<ffi::F32>>()   // sin
                                  .Arg<ffi::Buffer<ffi::S32>>()   // prompt_mask
                                  .Arg<ffi::Buffer<ffi::S32>>()   // index
                                  .Arg<ffi::Buffer<ffi::F32>>()   // in_norm
                                  .Arg<ffi::Buffer<ffi::F32>>()   // post_norm
                                  .Arg<ffi::Buffer<ffi::F32>>()   // final_norm
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w_qkv
                                  .Arg<ffi::Buffer<ffi::F32>>()   // b_qkv
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w_o
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w_gu
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w_down
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w_head
                                  .Arg<ffi::Buffer<ffi::F32>>()   // q_norm
                                  .Arg<ffi::Buffer<ffi::F32>>()   // k_norm
                                  .RemainingArgs()                // 4 cache arrays per layer
                                  .Ret<ffi::Buffer<ffi::F32>>()   // logits
                                  .Ret<ffi::Buffer<ffi::F32>>()   // k_new
                                  .Ret<ffi::Buffer<ffi::F32>>()   // v_new
                                  .Attr<int64_t>("num_heads")
                                  .Attr<int64_t>("num_kv_heads")
                                  .Attr<int64_t>("intermediate_size")
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("qk_norm"));
