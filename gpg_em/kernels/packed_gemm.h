// Skinny GEMM over packed weights: y[M, N] = x[M, K] @ W for W stored as ceil(N / 48) panels [K, 48]
// (packed[p, k, c] = W[k, 48 p + c], columns zero-padded), the panels split over the pool.
#ifndef GPG_EM_KERNELS_PACKED_GEMM_H_
#define GPG_EM_KERNELS_PACKED_GEMM_H_

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "pool.h"
#include "vec_math.h"

namespace gpg_em_cpu {

constexpr int64_t kPanel = 48;   // packed panel width: three 16-float vectors
constexpr int64_t kChunk = 64;   // k rows of a panel used by all row blocks while they sit in L1
constexpr int64_t kAhead = 128;  // software prefetch distance into L2, in panel rows (24 KiB)

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
inline void Gemm(const float* x, int64_t M, int64_t K, const float* packed, int64_t N, float* y) {
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

}  // namespace gpg_em_cpu

#endif  // GPG_EM_KERNELS_PACKED_GEMM_H_
