// Decoding-time logit methods on CPU as XLA:CPU FFI custom calls, one row of float32 logits z [V]
// at a time: EM-INF (gpg_em/rollout/em_inf.py) and adaptive temperature
// (gpg_em/rollout/adaptive_temperature.py). The Python modules hold the straightforward
// formulations and the formulas' sources; the tests hold these routines equal to them.
//
// Why: done as array programs, every Adam step of EM-INF re-reads and re-writes several [B, V]
// arrays (log-softmax, softmax, gradient, two moments, the logits) and adaptive temperature runs
// 20 bisection passes over [B, V]. Here a row's working set (its logits, the two Adam moments,
// softmax(z) and exp(x - ref), 5 V floats, ~1 MB at V = 49152) stays in the core's L2 while all
// steps run, each step is one pass, rows whose entropy is already below delta stop after one
// pass, and rows are spread over the threads of pool.h.
//
// EM-INF, one pass per Adam step. With u_j = exp(x_j - ref) for a reference ref near max(x):
//   S = sum u, T = sum u (x - ref), log q_j = x_j - ref - log S, H = log S - T / S.
// The pass that applies step t's update also computes u, S, T of the new x against the same ref
// (an Adam step moves a logit by at most lr (1 - b1) / sqrt(1 - b2) ~ 3.2 lr), so step t + 1 needs
// no exp of its own; ref is reset to the row's maximum if it drifts by more than 30.
//
// Adaptive temperature: the reference bisects log tau in [log tau_min, 0] for n_iters steps and
// returns the feasible end. Here each evaluation at beta = 1 / tau also yields
//   dH / d log tau = beta^2 Var_q(z),   q = softmax(beta z)
// so a safeguarded Newton iteration on f(s) = H(exp(s)) - target brackets the root to the same
// width (log(1 / tau_min) / 2^n_iters) in a handful of passes (~7 against 20 on LLM-like rows;
// `NextProbe`). The feasible end is returned, as there.
//
// Vectors are GCC vector extensions: 16 floats with AVX-512, else 8 (AVX2 with -march=native).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#ifdef __AVX512F__
constexpr int64_t kW = 16;
#else
constexpr int64_t kW = 8;
#endif
typedef float vf __attribute__((vector_size(4 * kW)));
typedef int32_t vi __attribute__((vector_size(4 * kW)));
constexpr float kFill = -1e30f;  // tail lanes: exp gives 0, and 0 * kFill stays finite

inline vf Splat(float a) { return vf{} + a; }
inline vf Load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void Store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf LoadPart(const float* p, int64_t n) {  // n <= kW values, the rest kFill
  float t[kW];
  for (int64_t i = 0; i < kW; ++i) t[i] = i < n ? p[i] : kFill;
  return Load(t);
}
inline void StorePart(float* p, vf v, int64_t n) {
  float t[kW];
  Store(t, v);
  std::copy(t, t + n, p);
}
inline vf Max(vf a, vf b) { return a > b ? a : b; }
inline float Sum(vf v) {
  float s = 0.f;
  for (int64_t i = 0; i < kW; ++i) s += v[i];
  return s;
}
inline float MaxOf(vf v) {
  float m = v[0];
  for (int64_t i = 1; i < kW; ++i) m = std::max(m, v[i]);
  return m;
}
inline vf Sqrt(vf v) {
  for (int64_t i = 0; i < kW; ++i) v[i] = std::sqrt(v[i]);
  return v;
}

// exp(x) as Cephes' expf (x = n ln2 + r, |r| <= ln2 / 2, degree-7 polynomial, times 2^n); 0 below
// -87.3 (and for -inf).
inline vf Exp(vf x) {
  const vi keep = x >= Splat(-87.3f);
  x = Max(x, Splat(-87.3f));
  x = x < Splat(88.3f) ? x : Splat(88.3f);
  const vf magic = Splat(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer
  const vf n = (x * 1.44269504088896341f + magic) - magic;
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = Splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + (r + 1.f);
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return keep ? p * scale : Splat(0.f);
}

// body(j, count) for the vectors of a row of V floats: full ones, then a partial tail.
template <typename F>
inline void ForVectors(int64_t V, F&& body) {
  int64_t j = 0;
  for (; j + kW <= V; j += kW) body(j, kW);
  if (j < V) body(j, V - j);
}
inline vf LoadRow(const float* row, int64_t j, int64_t n) { return n == kW ? Load(row + j) : LoadPart(row + j, n); }
inline void StoreRow(float* row, int64_t j, vf v, int64_t n) {
  if (n == kW) Store(row + j, v);
  else StorePart(row + j, v, n);
}

float RowMax(const float* x, int64_t V) {
  vf m = Splat(kFill);
  ForVectors(V, [&](int64_t j, int64_t n) { m = Max(m, LoadRow(x, j, n)); });
  return MaxOf(m);
}

struct ExpSums {
  float s, t;  // sum u, sum u (x - ref), u = exp(x - ref)
};

// u = exp(x - ref) (stored), with its sums.
ExpSums ExpPass(const float* x, int64_t V, float ref, float* u) {
  vf s = Splat(0.f), t = Splat(0.f);
  ForVectors(V, [&](int64_t j, int64_t n) {
    const vf d = LoadRow(x, j, n) - ref, e = Exp(d);
    Store(u + j, e);
    s += e;
    t += e * d;
  });
  return {Sum(s), Sum(t)};
}

// ------------------------------------------------------------------ EM-INF

struct EmInfParams {
  float lr, kl, delta, b1, b2, eps;
  int64_t steps;
};

struct RowScratch {  // per thread, each padded to whole vectors
  std::vector<float> a, b, c, d;
  void Fit(int64_t V) {
    const size_t n = size_t((V + kW - 1) / kW * kW);
    for (auto* v : {&a, &b, &c, &d})
      if (v->size() < n) v->resize(n);
  }
};

// One Adam step of EM-INF on x in place (t = step, 1-based), from u = exp(x - ref) and its sums.
// The entropy gradient's factor log q_j + H is x_j - E_q[x] (E_q[x] = ref + T / S), written so
// to avoid the cancellation of log q_j against H. Unless `last`, writes the new x's u and returns
// its sums and maximum.
struct StepSums {
  ExpSums sums;
  float top;
};

StepSums AdamStep(float* x, int64_t V, const EmInfParams& c, int64_t t, bool last, float ref, ExpSums cur,
                  const float* p_u, float inv_s0, const float* u_in, float* u_out, float* m, float* v) {
  const float inv_s = 1.f / cur.s, mean = ref + cur.t / cur.s;
  const float inv_bc1 = 1.f / (1.f - std::pow(c.b1, float(t))), inv_bc2 = 1.f / (1.f - std::pow(c.b2, float(t)));
  vf s_new = Splat(0.f), t_new = Splat(0.f), top = Splat(kFill);
  ForVectors(V, [&](int64_t j, int64_t n) {
    const vf xv = LoadRow(x, j, n), q = Load(u_in + j) * inv_s;
    const vf g = q * (mean - xv) + c.kl * (q - Load(p_u + j) * inv_s0);
    const vf mm = t == 1 ? (1.f - c.b1) * g : c.b1 * Load(m + j) + (1.f - c.b1) * g;
    const vf vv = t == 1 ? (1.f - c.b2) * (g * g) : c.b2 * Load(v + j) + (1.f - c.b2) * (g * g);
    const vf xn = xv - c.lr * (mm * inv_bc1) / (Sqrt(vv * inv_bc2) + c.eps);
    StoreRow(x, j, xn, n);
    if (last) return;
    Store(m + j, mm);
    Store(v + j, vv);
    const vf d = xn - ref, e = Exp(d);
    Store(u_out + j, e);
    s_new += e;
    t_new += e * d;
    top = Max(top, xn);
  });
  return {{Sum(s_new), Sum(t_new)}, MaxOf(top)};
}

void EmInfRow(float* x, int64_t V, const EmInfParams& c, RowScratch& sc) {
  sc.Fit(V);
  float* p_u = sc.a.data();  // exp(z - max z): softmax(z) unnormalised
  float *u = sc.b.data(), *m = sc.c.data(), *v = sc.d.data();
  float ref = RowMax(x, V);
  ExpSums cur = ExpPass(x, V, ref, p_u);
  const float inv_s0 = 1.f / cur.s;
  const float* u_in = p_u;
  for (int64_t t = 1; t <= c.steps; ++t) {
    const float h = std::log(cur.s) - cur.t / cur.s;
    if (!(h >= c.delta)) return;  // stopped (NaN too, as the reference's `h >= delta`)
    const bool last = t == c.steps;
    const StepSums next = AdamStep(x, V, c, t, last, ref, cur, p_u, inv_s0, u_in, u, m, v);
    if (last) return;
    cur = next.sums;
    u_in = u;
    if (std::fabs(next.top - ref) > 30.f || !(cur.s > 0.f)) {  // keeps exp in range
      ref = next.top;
      cur = ExpPass(x, V, ref, u);
    }
  }
}

// ------------------------------------------------------------------ adaptive temperature

struct Tempered {
  float h, slope;  // H(softmax(beta z)) and dH / d log tau = beta^2 Var_q(z)
};

Tempered Evaluate(const float* z, int64_t V, float top, float beta) {
  vf s = Splat(0.f), a = Splat(0.f), b = Splat(0.f);
  ForVectors(V, [&](int64_t j, int64_t n) {
    const vf d = LoadRow(z, j, n) - top, e = Exp(beta * d), ed = e * d;
    s += e;
    a += ed;
    b += ed * d;  // (e d) d: 0 * kFill * kFill would overflow as e (d d)
  });
  const float S = Sum(s), mean = Sum(a) / S, var = std::max(Sum(b) / S - mean * mean, 0.f);
  return {std::log(S) - beta * mean, beta * beta * var};
}

struct TauParams {
  float alpha, delta, tau_min;
  int64_t n_iters;
};

// The next point to evaluate in the bracket [lo, hi] (f(lo) <= 0 < f(hi)), from the values and
// slopes at its ends (f_lo NaN while lo is unevaluated): Newton's root from the end with the
// smaller |f|, else the secant's; moved half a tolerance away from the nearer end so that the
// bracket closes from both sides; a bisection when `bisect` or when the estimate is outside.
float NextProbe(float lo, float hi, float f_lo, float d_lo, float f_hi, float d_hi, float tol, bool bisect) {
  const bool from_lo = std::fabs(f_lo) < std::fabs(f_hi);  // false while f_lo is NaN
  float r = from_lo ? lo - f_lo / d_lo : hi - f_hi / d_hi;
  if (!(r > lo && r < hi) && !std::isnan(f_lo)) r = lo - f_lo * (hi - lo) / (f_hi - f_lo);
  const float probe = r - lo < hi - r ? r + 0.5f * tol : r - 0.5f * tol;
  return bisect || !(probe > lo && probe < hi) ? 0.5f * (lo + hi) : probe;
}

// The largest tau in [tau_min, 1] with H(z / tau) <= max(alpha H(z), delta), to the reference's
// bracket width (file comment); tau_min when even that is infeasible. Three probes in a row that
// do not halve the bracket are followed by a bisection, so it closes within ~4 n_iters passes.
float AdaptiveTau(const float* z, int64_t V, const TauParams& c) {
  const float top = RowMax(z, V);
  const Tempered at_one = Evaluate(z, V, top, 1.f);
  const float target = std::max(c.alpha * at_one.h, c.delta);
  if (at_one.h <= target) return 1.f;
  float lo = std::log(c.tau_min), hi = 0.f, f_lo = NAN, d_lo = NAN, f_hi = at_one.h - target, d_hi = at_one.slope;
  const float tol = (hi - lo) / float(int64_t(1) << std::min<int64_t>(c.n_iters, 40));
  int slow = 0;
  for (int64_t it = 0; it < 4 * c.n_iters + 8 && hi - lo > tol; ++it) {
    const float probe = NextProbe(lo, hi, f_lo, d_lo, f_hi, d_hi, tol, slow >= 3);
    const float width = hi - lo;
    const Tempered at = Evaluate(z, V, top, std::exp(-probe));
    if (at.h - target <= 0.f) {
      lo = probe, f_lo = at.h - target, d_lo = at.slope;
    } else {
      hi = probe, f_hi = at.h - target, d_hi = at.slope;
    }
    slow = hi - lo > 0.5f * width ? slow + 1 : 0;
  }
  return std::exp(lo);
}

// ------------------------------------------------------------------ FFI

std::mutex& CallMutex() {  // one call at a time: the pool runs one job
  static std::mutex mu;
  return mu;
}

ffi::Error CheckRows(const ffi::Buffer<ffi::F32>& z, const char* what) {
  if (z.dimensions().size() != 2)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      std::string("gpg_em logits_cpu: ") + what + " expects logits [rows, vocab]");
  return ffi::Error::Success();
}

// Flushes denormals to zero (FTZ and DAZ) while it lives, as XLA:CPU computes: the pool's own
// threads would otherwise take the slow path on every tiny probability.
class FlushDenormals {
 public:
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  const unsigned saved_;
};

// Copies row b of z into out (unless they alias) and returns out's row.
float* OutRow(const ffi::Buffer<ffi::F32>& z, ffi::ResultBuffer<ffi::F32>& out, int64_t b, int64_t V) {
  const float* src = z.typed_data() + b * V;
  float* dst = out->typed_data() + b * V;
  if (src != dst) std::copy(src, src + V, dst);
  return dst;
}

ffi::Error EmInf(ffi::Buffer<ffi::F32> z, ffi::ResultBuffer<ffi::F32> x, float lr, int64_t n_steps,
                 float kl_weight, float delta, float b1, float b2, float eps) {
  if (auto e = CheckRows(z, "EM-INF"); e.failure()) return e;
  std::lock_guard<std::mutex> lock(CallMutex());
  const int64_t B = z.dimensions()[0], V = z.dimensions()[1];
  const EmInfParams c{lr, kl_weight, delta, b1, b2, eps, n_steps};
  gpg_em_cpu::GetPool().For(B, [&](int64_t b0, int64_t b1_) {
    thread_local RowScratch sc;
    const FlushDenormals ftz;
    for (int64_t b = b0; b < b1_; ++b) {
      float* row = OutRow(z, x, b, V);
      if (c.steps > 0) EmInfRow(row, V, c, sc);
    }
  });
  return ffi::Error::Success();
}

ffi::Error AdaptiveTemperature(ffi::Buffer<ffi::F32> z, ffi::ResultBuffer<ffi::F32> y,
                               ffi::ResultBuffer<ffi::F32> tau, float alpha, float delta, float tau_min,
                               int64_t n_iters) {
  if (auto e = CheckRows(z, "adaptive temperature"); e.failure()) return e;
  std::lock_guard<std::mutex> lock(CallMutex());
  const int64_t B = z.dimensions()[0], V = z.dimensions()[1];
  const TauParams c{alpha, delta, tau_min, n_iters};
  gpg_em_cpu::GetPool().For(B, [&](int64_t b0, int64_t b1) {
    const FlushDenormals ftz;
    for (int64_t b = b0; b < b1; ++b) {
      float* row = OutRow(z, y, b, V);
      const float t = AdaptiveTau(row, V, c);
      tau->typed_data()[b] = t;
      if (t != 1.f)
        for (int64_t j = 0; j < V; ++j) row[j] = row[j] / t;
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GpgEmEmInf, EmInf,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // z [B, V]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // x [B, V] (may alias z)
                                  .Attr<float>("lr")
                                  .Attr<int64_t>("n_steps")
                                  .Attr<float>("kl_weight")
                                  .Attr<float>("delta")
                                  .Attr<float>("b1")
                                  .Attr<float>("b2")
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(GpgEmAdaptiveTemperature, AdaptiveTemperature,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // z [B, V]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // z / tau [B, V] (may alias z)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // tau [B]
                                  .Attr<float>("alpha")
                                  .Attr<float>("delta")
                                  .Attr<float>("tau_min")
                                  .Attr<int64_t>("n_iters"));
