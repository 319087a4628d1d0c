// Times the decode kernel's packed GEMM (gpg_em/kernels/packed_gemm.h) on one SmolLM2-135M decode
// step's products at M rows: per layer [M, 576] x [576, 960] (qkv), [576, 576] (o), [576, 3072]
// (gate | up), [M, 1536] x [1536, 576] (down); then the head [576, 49152]. Weights are distinct per
// layer, so they stream from memory as in a real step. Prints the fastest and the median step time
// over `reps`.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "packed_gemm.h"

using namespace gpg_em_cpu;  // NOLINT

struct Product { int64_t K, N; };

int main(int argc, char** argv) {
  const int64_t M = argc > 1 ? std::atoll(argv[1]) : 32, layers = 30, reps = argc > 2 ? std::atoll(argv[2]) : 7;
  const Product layer[] = {{576, 960}, {576, 576}, {576, 3072}, {1536, 576}}, head = {576, 49152};
  auto packed_size = [](Product p) { return (p.N + kPanel - 1) / kPanel * p.K * kPanel; };
  std::vector<std::vector<float>> w;
  for (int64_t l = 0; l < layers; ++l)
    for (const Product& p : layer) w.emplace_back(packed_size(p), 0.01f);
  w.emplace_back(packed_size(head), 0.01f);
  std::vector<float> x(M * 1536, 1.f), y(M * 49152);
  double flops = 0;
  std::vector<double> times;
  for (int64_t r = 0; r < reps + 1; ++r) {  // the first is a warm-up
    const auto t0 = std::chrono::steady_clock::now();
    size_t i = 0;
    flops = 0;
    for (int64_t l = 0; l < layers; ++l)
      for (const Product& p : layer) Gemm(x.data(), M, p.K, w[i++].data(), p.N, y.data()), flops += 2.0 * M * p.K * p.N;
    Gemm(x.data(), M, head.K, w[i].data(), head.N, y.data());
    flops += 2.0 * M * head.K * head.N;
    if (r) times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  const double best = times.front(), median = times[times.size() / 2];
  std::printf("%s tile %d rows x %d vectors, M=%lld: one step's GEMMs in %.1f ms (median %.1f), %.1f GFLOP/s"
              " (y[0]=%g)\n", kBackend, kGemmRows, kGemmVecs, (long long)M, 1e3 * best, 1e3 * median,
              flops / best / 1e9, y[0]);
  std::fflush(stdout);
  std::_Exit(0);  // the pool's workers are detached
}
