#include "parallel.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
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

// Busy-waits (politely) until pred() or the budget has passed; true when pred() held.
template <class Pred>
bool spin_until(Pred pred, std::chrono::microseconds budget) {
  const auto deadline = std::chrono::steady_clock::now() + budget;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (pred()) return true;
      GF_PAUSE();
    }
    if (std::chrono::steady_clock::now() >= deadline) return pred();
  }
}

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
    // The helpers are finishing their last items: waiting for them on a futex would add its
    // wake-up latency to every call.
    spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; }, kCallerSpin);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_.load() == 0; });
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
      // Calls a training step apart (autograd, loss and optimizer run in between) find the
      // worker awake: a futex wake-up costs 30-45 µs on a virtual machine, as much as a short
      // recurrence.
      spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; }, kWorkerSpin);
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_.load() != seen; });
        if (stopping_) return;
        seen = generation_.load();
        if (index >= helpers_) continue;
      }
      drain();
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);  // the caller checks pending_ under it
        done_.notify_one();
      }
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t)>* job_ = nullptr;
  int64_t items_ = 0;
  std::atomic<int64_t> next_{0};
  int helpers_ = 0;
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> generation_{0};
  static constexpr std::chrono::microseconds kWorkerSpin{1000}, kCallerSpin{1000};
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

int hardware_threads() {
  // Cached: glibc reads /sys on every hardware_concurrency() call, and kernels ask per call.
  static const int count = int(std::max(1u, std::thread::hardware_concurrency()));
  return count;
}

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
