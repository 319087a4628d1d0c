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

constexpr int kSpin = 4000;        // pause instructions a worker spins before it sleeps (~0.2-0.5 ms)
constexpr int64_t kChunksPerThread = 4;  // a job is split into T * 4 chunks, taken first come

// T - 1 persistent workers plus the calling thread. `For(n, body)` splits [0, n) into up to 4 T
// contiguous chunks; every thread takes chunks from a shared counter and runs body(begin, end) on
// them; `For` returns when all chunks are done. Chunks go to whichever thread is free, so a worker
// the OS has descheduled (the machine is shared) delays the call by at most the chunk it holds, not
// by its whole share. Workers spin briefly between calls (a step issues ~10 per layer back to
// back), then sleep, so XLA's own threads get the cores back.
class Pool {
 public:
  explicit Pool(int threads) : threads_(std::max(1, threads)) {
    for (int t = 1; t < threads_; ++t) std::thread([this] { Work(); }).detach();
  }

  template <typename F>
  void For(int64_t n, F&& body) {
    if (threads_ == 1 || n < 2) {
      body(int64_t{0}, n);
      return;
    }
    using Body = std::remove_reference_t<F>;
    Job job;
    job.fn = [](void* ctx, int64_t b, int64_t e) { (*static_cast<Body*>(ctx))(b, e); };
    job.ctx = &body;
    job.n = n;
    job.chunks = std::min<int64_t>(n, threads_ * kChunksPerThread);
    current_.store(&job);
    {
      std::lock_guard<std::mutex> lock(mu_);
      generation_.fetch_add(1);
    }
    cv_.notify_all();
    RunChunks(job);
    while (job.done.load(std::memory_order_acquire) != job.chunks) _mm_pause();
    // No worker may still be looking at `job` (on this stack) when it goes: a worker counts itself
    // in `inside_` before it reads `current_` (both sequentially consistent).
    current_.store(nullptr);
    while (inside_.load() != 0) _mm_pause();
  }

 private:
  struct Job {
    void (*fn)(void*, int64_t, int64_t) = nullptr;
    void* ctx = nullptr;
    int64_t n = 0, chunks = 0;
    std::atomic<int64_t> next{0}, done{0};
  };

  static void RunChunks(Job& job) {
    for (int64_t c; (c = job.next.fetch_add(1, std::memory_order_relaxed)) < job.chunks;) {
      job.fn(job.ctx, job.n * c / job.chunks, job.n * (c + 1) / job.chunks);
      job.done.fetch_add(1, std::memory_order_release);
    }
  }

  void Work() {
    uint64_t seen = 0;
    for (;;) {
      for (int i = 0; i < kSpin && generation_.load(std::memory_order_acquire) == seen; ++i) _mm_pause();
      if (generation_.load(std::memory_order_acquire) == seen) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      }
      seen = generation_.load(std::memory_order_acquire);
      inside_.fetch_add(1);
      if (Job* job = current_.load()) RunChunks(*job);
      inside_.fetch_sub(1);
    }
  }

  const int threads_;
  std::atomic<Job*> current_{nullptr};
  std::atomic<int> inside_{0};
  std::atomic<uint64_t> generation_{0};
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
