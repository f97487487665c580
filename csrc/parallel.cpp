#include "parallel.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GF_PAUSE() _mm_pause()
#else
#define GF_PAUSE() std::this_thread::yield()
#endif

namespace gf {
namespace {

class Pool {
 public:
  explicit Pool(int workers) {
    for (int w = 0; w < workers; ++w) threads_.emplace_back([this, w] { work(w); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }
  int workers() const { return int(threads_.size()); }

  // Caller holds busy_.
  void run(int64_t n, int helpers, const std::function<void(int64_t)>& fn) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &fn;
      items_ = n;
      next_.store(0);
      helpers_ = helpers;
      pending_ = helpers;
      error_ = nullptr;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    drain();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

  std::mutex busy_;

 private:
  void drain() {
    try {
      for (int64_t i; (i = next_.fetch_add(1)) < items_;) (*job_)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      next_.store(items_);  // stop handing out items
    }
  }

  void work(int index) {
    uint64_t seen = 0;
    for (;;) {
      // Back-to-back calls (a training loop) find the worker awake: a futex wake-up costs
      // tens of microseconds on a virtual machine, as much as a short recurrence.
      for (int spin = 0; spin < kSpinIterations && generation_.load(std::memory_order_acquire) == seen;
           ++spin)
        GF_PAUSE();
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_.load() != seen; });
        if (stopping_) return;
        seen = generation_.load();
        if (index >= helpers_) continue;
      }
      drain();
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t)>* job_ = nullptr;
  int64_t items_ = 0;
  std::atomic<int64_t> next_{0};
  int helpers_ = 0, pending_ = 0;
  std::atomic<uint64_t> generation_{0};
  static constexpr int kSpinIterations = 4000;  // ~100 µs
  bool stopping_ = false;
  std::exception_ptr error_;
};

Pool* pool = nullptr;
std::once_flag atfork_once;

Pool& get_pool() {
  std::call_once(atfork_once, [] {
    // A forked child has none of the parent's threads: it builds its own pool.
    pthread_atfork(nullptr, nullptr, [] { pool = nullptr; });
  });
  static std::mutex create;
  std::lock_guard<std::mutex> lock(create);
  if (!pool) pool = new Pool(hardware_threads() - 1);  // lives until exit
  return *pool;
}

thread_local bool inside_parallel = false;

}  // namespace

int hardware_threads() { return int(std::max(1u, std::thread::hardware_concurrency())); }

void parallel_for(int64_t n, int threads, const std::function<void(int64_t)>& fn) {
  threads = int(std::min<int64_t>(threads, n));
  if (threads <= 1 || inside_parallel) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  Pool& p = get_pool();
  std::unique_lock<std::mutex> busy(p.busy_, std::try_to_lock);
  if (!busy.owns_lock() || p.workers() == 0) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  inside_parallel = true;
  try {
    p.run(n, std::min(threads - 1, p.workers()), fn);
  } catch (...) {
    inside_parallel = false;
    throw;
  }
  inside_parallel = false;
}

}  // namespace gf
