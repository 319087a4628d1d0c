// One decode step (one new token per row) of a pre-norm RoPE decoder with grouped-query attention
// (Llama / Qwen2 / Qwen3), float32, as an XLA:CPU FFI custom call. Same mathematics as
// gpg_em/rollout/decode_step.py (`step_hidden` + `step_logits`), which the tests compare it with.
//
// Why a kernel: at decode batch sizes (B <= 32 rows) every product is a skinny [B, K] x [K, N] GEMM
// whose weights stream from memory once per step. XLA:CPU repacks each weight on every call and runs
// these at ~100 GFLOP/s on two cores, and each small op (norms, RoPE, residuals) costs a thunk
// dispatch. Here the weights are packed once (`gpg_em.rollout.decode_cpu.pack_weights`) and every
// layer of a step runs in this one call.
//
// Weight layout ("packed", packed_gemm.h): a [K, N] kernel (x @ W) is stored as ceil(N / 48) panels
// [K, 48], columns zero-padded: packed[p, k, c] = W[k, 48 p + c]. A panel's k-th row is three
// 16-float vectors, so with AVX-512 the inner loop is 3 loads + 3 R fused multiply-adds for R rows
// of x (AVX2: one vector at a time; packed_gemm.h). Vectors: simd.h (AVX-512, or AVX2 + FMA);
// attention: attention.h; threads: pool.h.
//
// Operands (L layers, B = n G rows prompt-major, D model width, H/KVH heads, Dh head dim, F MLP
// width, V vocabulary, P prompt slots, C T generated slots):
//   x [B, D] embedded tokens; cos, sin [B, Dh]; prompt_mask [n, P] int32; index [] or [B] int32 (the
//   slot this step's key/value go to, for all rows or per row: generated slots < index are filled);
//   in_norm, post_norm [L, D]; final_norm [D]; w_qkv packed [L, *, D, 48] of [q | k | v] (H Dh +
//   2 KVH Dh columns) and b_qkv [L, H Dh + 2 KVH Dh]; w_o packed [L, *, H Dh, 48]; w_gu packed
//   [L, *, D, 48] of [gate | up] (2 F columns); w_down packed [L, *, F, 48]; w_head packed [*, D, 48];
//   q_norm, k_norm [L, Dh] (used when the attribute qk_norm is 1);
//   then per layer the cache: prompt_k_t [n, KVH, Dh, P], prompt_v [n, KVH, P, Dh],
//   gen_k_t [C, n, KVH, G, Dh, T], gen_v [C, n, KVH, G, T, Dh] (C blocks of T generated slots).
// Results: logits [B, V]; k_new, v_new [L, n, KVH, G, Dh] (RoPE applied to k), which the caller
// writes at generated slot `index` (per row: index[b]) of each layer's cache.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "attention.h"
#include "packed_gemm.h"
#include "pool.h"
#include "vec_math.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using namespace gpg_em_cpu;  // NOLINT: this file's own helpers

namespace {

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
      for (int64_t f = 0; f < F; f += kLanes) {
        const Mask m = FirstN(F - f);
        const Vec gv = LoadN(m, g + f), uv = LoadN(m, g + F + f);
        const Vec one = Set1(1.f);  // sigmoid(g) = 1 / (1 + exp(-g))
        const Vec sig = Div(one, Add(one, Exp(Sub(Zero(), gv))));
        StoreN(a + f, m, Mul(Mul(gv, sig), uv));
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
  const auto gen_dims = first_cache.value().dimensions();
  if (gen_dims.size() != 6) return Fail("gen_k_t must be [C, n, KVH, G, Dh, T]");
  dm.C = gen_dims[0];
  dm.T = gen_dims[5];
  const int64_t n_index = int64_t(index.element_count());
  if (n_index != 1 && n_index != dm.B) return Fail("index must hold 1 or B values");
  dm.row_index = n_index == dm.B ? index.typed_data() : nullptr;
  dm.index = *std::max_element(index.typed_data(), index.typed_data() + n_index);
  if (*std::min_element(index.typed_data(), index.typed_data() + n_index) < 0 || dm.index >= dm.C * dm.T)
    return Fail("index outside the generated slots");
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
                                  dm.C * dm.B * dm.KVH * dm.Dh * dm.T, dm.C * dm.B * dm.KVH * dm.T * dm.Dh};
  std::vector<const float*> cache_data(4 * L);  // layer l's arrays at 4 l .. 4 l + 3
  for (int64_t a = 0; a < 4 * L; ++a) {
    auto buf = caches.get<ffi::Buffer<ffi::F32>>(a);
    if (buf.has_error()) return buf.error();
    if (int64_t(buf.value().element_count()) != cache_sizes[a % 4])
      return Fail("cache array " + std::to_string(a % 4) + " of layer " + std::to_string(a / 4) +
                  " has the wrong size for these model dimensions");
    cache_data[a] = buf.value().typed_data();
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
    const LayerCache c{cache_data[4 * l], cache_data[4 * l + 1], cache_data[4 * l + 2], cache_data[4 * l + 3]};
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
  for (int64_t b = 0; b < dm.B; ++b)
    RmsNorm(x.data() + b * dm.D, final_norm.typed_data(), dm.D, eps, sc.h.data() + b * dm.D);
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
