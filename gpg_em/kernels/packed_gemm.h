// Skinny GEMM over packed weights: y[M, N] = x[M, K] @ W for W stored as ceil(N / 48) panels [K, 48]
// (packed[p, k, c] = W[k, 48 p + c], columns zero-padded), the panels split over the pool.
#ifndef GPG_EM_KERNELS_PACKED_GEMM_H_
#define GPG_EM_KERNELS_PACKED_GEMM_H_

#include <algorithm>
#include <cstdint>

#include "pool.h"
#include "simd.h"

namespace gpg_em_cpu {

constexpr int64_t kPanel = 48;   // packed panel width: three 16-float vectors
constexpr int64_t kChunk = 64;   // k rows of a panel used by all row blocks while they sit in L1
constexpr int64_t kAhead = 128;  // software prefetch distance into L2, in panel rows (24 KiB)

// The register tile: up to kGemmRows rows of x by kGemmVecs 16-float vectors of a panel's columns,
// kGemmRows kGemmVecs accumulators. AVX-512 (32 zmm): 8 rows by the whole panel (24 accumulators,
// 3 loads). AVX2 (16 ymm, two per vector): 6 rows by one vector (12 ymm accumulators, 2 loads, the
// broadcast), the panel swept in three column strips (the fastest measured by benchmarks/packed_gemm.py,
// which sets GPG_EM_GEMM_ROWS / GPG_EM_GEMM_VECS to compare shapes).
#if defined(GPG_EM_GEMM_ROWS) && defined(GPG_EM_GEMM_VECS)
constexpr int kGemmRows = GPG_EM_GEMM_ROWS, kGemmVecs = GPG_EM_GEMM_VECS;
#elif defined(__AVX512F__)
constexpr int kGemmRows = 8, kGemmVecs = 3;
#else
constexpr int kGemmRows = 6, kGemmVecs = 1;
#endif
static_assert(3 % kGemmVecs == 0, "column strips must tile the 48-column panel");

// R rows of y[:, strip] (+)= x[:, k0:k1] @ panel[k0:k1, strip], the strip being V vectors from column
// 16 c0; `cols` (<= 48) of the panel's columns are real. Each y element sums k in order.
template <int R, int V>
inline void Tile(const float* x, int64_t ldx, const float* panel, int64_t k0, int64_t k1, float* y,
                 int64_t ldy, int c0, int64_t cols, bool first) {
  Mask m[V];
  GPG_EM_UNROLL for (int c = 0; c < V; ++c) m[c] = FirstN(cols - kLanes * (c0 + c));
  Vec acc[R][V];
  GPG_EM_UNROLL for (int r = 0; r < R; ++r)
    GPG_EM_UNROLL for (int c = 0; c < V; ++c)
      acc[r][c] = first ? Zero() : LoadN(m[c], y + r * ldy + kLanes * (c0 + c));
  for (int64_t k = k0; k < k1; ++k) {
    const float* w = panel + k * kPanel + kLanes * c0;
    GPG_EM_UNROLL for (int c = 0; c < V; ++c) PrefetchL2(w + kAhead * kPanel + kLanes * c);
    Vec b[V];
    GPG_EM_UNROLL for (int c = 0; c < V; ++c) b[c] = Load(w + kLanes * c);
    GPG_EM_UNROLL for (int r = 0; r < R; ++r) {
      const Vec a = Set1(x[r * ldx + k]);
      GPG_EM_UNROLL for (int c = 0; c < V; ++c) acc[r][c] = Fmadd(a, b[c], acc[r][c]);
    }
  }
  GPG_EM_UNROLL for (int r = 0; r < R; ++r)
    GPG_EM_UNROLL for (int c = 0; c < V; ++c) StoreN(y + r * ldy + kLanes * (c0 + c), m[c], acc[r][c]);
}

// All M rows of one strip of one k-chunk from row m on: tiles of R rows while they fit, then of the
// next, smaller heights in `Rest`.
template <int R, int... Rest>
inline void StripRows(const float* x, int64_t M, int64_t K, const float* panel, int64_t k0, int64_t k1, float* y,
                      int64_t N, int c0, int64_t cols, int64_t m) {
  for (; m + R <= M; m += R) Tile<R, kGemmVecs>(x + m * K, K, panel, k0, k1, y + m * N, N, c0, cols, k0 == 0);
  if constexpr (sizeof...(Rest) > 0) StripRows<Rest...>(x, M, K, panel, k0, k1, y, N, c0, cols, m);
}

// y[M, N] = x[M, K] @ W for W packed as ceil(N / 48) panels [K, 48]; panels split over the pool. Per
// k-chunk and column strip, rows go in tiles of kGemmRows, then 4, 2, 1.
inline void Gemm(const float* x, int64_t M, int64_t K, const float* packed, int64_t N, float* y) {
  const int64_t panels = (N + kPanel - 1) / kPanel;
  GetPool().For(panels, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float* panel = packed + p * K * kPanel;
      const int64_t cols = std::min(kPanel, N - p * kPanel);
      float* yp = y + p * kPanel;
      for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
        const int64_t k1 = std::min(K, k0 + kChunk);
        for (int c0 = 0; c0 < 3 && kLanes * c0 < cols; c0 += kGemmVecs)
          StripRows<kGemmRows, 4, 2, 1>(x, M, K, panel, k0, k1, yp, N, c0, cols, 0);
      }
    }
  });
}

}  // namespace gpg_em_cpu

#endif  // GPG_EM_KERNELS_PACKED_GEMM_H_
