// The decode kernel's thread pool: the calling thread plus T - 1 workers that spin, then sleep.
#ifndef GPG_EM_KERNELS_POOL_H_
#define GPG_EM_KERNELS_POOL_H_

#include <immintrin.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <type_traits>

namespace gpg_em_cpu {

constexpr int kSpin = 4000;  // pause instructions a worker spins before it sleeps (~0.2-0.5 ms)

// T - 1 persistent workers plus the calling thread. `For(n, body)` runs body(begin, end) on T
// contiguous parts of [0, n) and returns when all are done. Workers spin briefly between calls
// (a step issues ~10 per layer back to back), then sleep, so XLA's own threads get the cores back.
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

inline int DefaultThreads() {
  if (const char* env = std::getenv("GPG_EM_CPU_THREADS")) return std::max(1, std::atoi(env));
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// The process's pool, made on first use. A forked child has none of its parent's threads, so a
// process whose pid changed makes its own (the parent's pool object is left as it is).
inline Pool& GetPool() {
  static Pool* pool = nullptr;  // never destroyed: its threads are detached
  static pid_t owner = 0;
  if (pool == nullptr || owner != getpid()) {
    pool = new Pool(DefaultThreads());
    owner = getpid();
  }
  return *pool;
}

}  // namespace gpg_em_cpu

#endif  // GPG_EM_KERNELS_POOL_H_
