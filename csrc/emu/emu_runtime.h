// Emulated CUDA backend: lets the project's CUDA kernel sources (.cuh) compile
// with the host C++ compiler (C++20) and run on the CPU.
//
// Include this header instead of cuda_runtime.h when building without nvcc.
// Each CUDA block runs on one OS thread; its CUDA threads are fibers
// (cooperative user-level threads) scheduled round-robin, each running until it
// reaches __syncthreads() or returns. Blocks run in parallel on a pool of OS
// threads, so global-memory atomics are real atomics (std::atomic_ref).
//
// Supported: threadIdx/blockIdx/blockDim/gridDim, __syncthreads, the atomics
// declared below, __ldg, dynamic shared memory via GF_DYNAMIC_SHARED.
// Not supported: static __shared__ variables (every fiber would need to see the
// same per-block storage, which a plain C++ declaration cannot express; using
// __shared__ is a compile error), warp-level primitives (__shfl*, __syncwarp,
// ballots: fibers are not run in lockstep), __constant__, texture memory,
// dynamic parallelism, CUDA math intrinsics.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <type_traits>

#ifndef __CUDACC__
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
#endif

// CUDA qualifiers have no meaning on the host.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// _Pragma takes a single string literal, hence the long line.
#define __shared__ \
  _Pragma("GCC error \"static __shared__ variables are not supported by the emulated CUDA backend; use GF_DYNAMIC_SHARED(type, name)\"")

namespace gf::emu {

inline constexpr std::size_t kMaxSharedBytes = 227 * 1024;
inline constexpr unsigned kMaxThreadsPerBlock = 1024;

// What a kernel sees as its built-in variables; one per fiber.
struct FiberContext {
  dim3 thread_idx;
  dim3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
  unsigned char* shared_mem = nullptr;  // the block's dynamic shared memory
};

namespace detail {
// Set by the scheduler right before it switches into a fiber. Fibers never
// migrate between OS threads, so a thread_local is the fiber's context.
inline thread_local const FiberContext* current_fiber = nullptr;

using KernelThunk = void (*)(const void* body);
void launch_impl(dim3 grid, dim3 block, std::size_t shared_bytes, KernelThunk thunk,
                 const void* body);

template <class T>
T atomic_min(T* address, T val) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load(std::memory_order_relaxed);
  while (val < old && !ref.compare_exchange_weak(old, val)) {
  }
  return old;
}

template <class T>
T atomic_max(T* address, T val) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load(std::memory_order_relaxed);
  while (old < val && !ref.compare_exchange_weak(old, val)) {
  }
  return old;
}

template <class T>
T atomic_cas(T* address, T compare, T val) {
  // On failure compare_exchange loads the current value into `compare`; on
  // success `compare` already equals the old value. Either way it is the result.
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, val);
  return compare;
}
}  // namespace detail

inline const FiberContext& current() noexcept { return *detail::current_fiber; }

// Runs `body` (a no-argument callable, typically `[=]{ kernel(args...); }`) once
// for every thread of every block, like kernel<<<grid, block, shared_bytes>>>,
// and returns when all have finished. Throws std::invalid_argument for a bad
// configuration (a grid with a zero dimension is a no-op), std::runtime_error
// for divergent __syncthreads, and rethrows the first exception a kernel threw.
// `body` is invoked concurrently from several OS threads, hence const.
template <class F>
void launch(dim3 grid, dim3 block, std::size_t shared_bytes, F&& body) {
  using Body = std::remove_reference_t<F>;
  static_assert(std::is_invocable_v<const Body&>,
                "gf::emu::launch: the kernel body must be callable as const with no "
                "arguments (it runs concurrently for all emulated threads)");
  detail::launch_impl(
      grid, block, shared_bytes,
      [](const void* p) { (*static_cast<const Body*>(p))(); }, std::addressof(body));
}

}  // namespace gf::emu

#define threadIdx (::gf::emu::current().thread_idx)
#define blockIdx (::gf::emu::current().block_idx)
#define blockDim (::gf::emu::current().block_dim)
#define gridDim (::gf::emu::current().grid_dim)

#define GF_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(::gf::emu::current().shared_mem)

// Block-wide barrier: yields to the block's scheduler until every thread of the
// block has arrived.
void __syncthreads();

template <class T>
inline T __ldg(const T* p) {
  return *p;
}

// Atomics return the old value, as in CUDA.
inline float atomicAdd(float* address, float val) {
  return std::atomic_ref<float>(*address).fetch_add(val);
}
inline double atomicAdd(double* address, double val) {
  return std::atomic_ref<double>(*address).fetch_add(val);
}
inline int atomicAdd(int* address, int val) {
  return std::atomic_ref<int>(*address).fetch_add(val);
}
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long val) {
  return std::atomic_ref<unsigned long long>(*address).fetch_add(val);
}
inline long long atomicAdd(long long* address, long long val) {
  return std::atomic_ref<long long>(*address).fetch_add(val);
}
inline int atomicMin(int* address, int val) { return ::gf::emu::detail::atomic_min(address, val); }
inline long long atomicMin(long long* address, long long val) {
  return ::gf::emu::detail::atomic_min(address, val);
}
inline int atomicMax(int* address, int val) { return ::gf::emu::detail::atomic_max(address, val); }
inline long long atomicMax(long long* address, long long val) {
  return ::gf::emu::detail::atomic_max(address, val);
}
inline int atomicCAS(int* address, int compare, int val) {
  return ::gf::emu::detail::atomic_cas(address, compare, val);
}
inline unsigned long long atomicCAS(unsigned long long* address, unsigned long long compare,
                                    unsigned long long val) {
  return ::gf::emu::detail::atomic_cas(address, compare, val);
}
