// Standalone test of the emulated CUDA backend. Build and run from the repo root:
//   g++ -std=c++20 -O2 -pthread -Icsrc csrc/emu/emu_runtime.cpp
//       csrc/emu/emu_selftest.cpp -o /tmp/emu_selftest && /tmp/emu_selftest
// The kernels are written as CUDA code would be, to exercise the macros too.
#include "emu/emu_runtime.h"

#include <cfenv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

int g_passed = 0;
int g_failed = 0;

#define CHECK(cond)                                                                   \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      throw std::logic_error(std::string("CHECK failed at line ") +                   \
                             std::to_string(__LINE__) + ": " #cond);                  \
    }                                                                                 \
  } while (0)

void run_test(const char* name, void (*test)()) {
  try {
    test();
    ++g_passed;
    std::printf("[ok]   %s\n", name);
  } catch (const std::exception& e) {
    ++g_failed;
    std::printf("[FAIL] %s: %s\n", name, e.what());
  }
}

// Runs `launch` and checks it throws an `E` whose message contains `needle`.
template <class E, class Launch>
void expect_throw(Launch&& launch, const char* needle) {
  try {
    launch();
  } catch (const E& e) {
    if (!std::strstr(e.what(), needle)) {
      throw std::logic_error(std::string("wrong message: ") + e.what());
    }
    return;
  } catch (const std::exception& e) {
    throw std::logic_error(std::string("wrong exception type: ") + e.what());
  }
  throw std::logic_error(std::string("no exception thrown, expected: ") + needle);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Counts destructor runs, to check that failed blocks unwind their fibers.
struct LiveCounter {
  int* constructed;
  int* destroyed;
  LiveCounter(int* c, int* d) : constructed(c), destroyed(d) { atomicAdd(constructed, 1); }
  ~LiveCounter() { atomicAdd(destroyed, 1); }
};

// ---------------------------------------------------------------------------
// Kernels

__device__ __forceinline__ static float load_value(const float* __restrict__ p, int i) {
  return __ldg(p + i);
}

// Tree reduction of a grid-stride slice per block; also checks that dynamic
// shared memory starts zeroed (each thread reads its slot before writing it).
template <unsigned kThreads>
__global__ void __launch_bounds__(kThreads)
    block_sum_kernel(const float* __restrict__ in, int n, float* __restrict__ out,
                     int* __restrict__ dirty_shared) {
  GF_DYNAMIC_SHARED(float, partial);
  const unsigned tid = threadIdx.x;
  if (partial[tid] != 0.0f) atomicAdd(dirty_shared, 1);
  float acc = 0.0f;
  for (int i = static_cast<int>(blockIdx.x * blockDim.x + tid); i < n;
       i += static_cast<int>(gridDim.x * blockDim.x)) {
    acc += load_value(in, i);
  }
  partial[tid] = acc;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (tid < stride) partial[tid] += partial[tid + stride];
    __syncthreads();
  }
  if (tid == 0) out[blockIdx.x] = partial[0];
}

struct AtomicTargets {
  float f_sum = 0;
  double d_sum = 0;
  int i_sum = 0;
  long long ll_sum = 0;
  unsigned long long ull_sum = 0;
  int i_min = 1 << 30;
  int i_max = -(1 << 30);
  long long ll_min = 1LL << 60;
  long long ll_max = -(1LL << 60);
  int cas_count = 0;
  unsigned long long cas_ull = 0;
  int tickets = 0;
};

__global__ void atomics_kernel(AtomicTargets* t, int* ticket_hits, int* bad_returns) {
  const int gid = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  atomicAdd(&t->f_sum, 1.0f);
  atomicAdd(&t->d_sum, 0.5);
  atomicAdd(&t->i_sum, 2);
  atomicAdd(&t->ll_sum, static_cast<long long>(gid) << 20);
  atomicAdd(&t->ull_sum, 3ull);
  atomicMin(&t->i_min, gid - 1000);
  atomicMax(&t->i_max, gid);
  atomicMin(&t->ll_min, -(static_cast<long long>(gid) << 32));
  atomicMax(&t->ll_max, static_cast<long long>(gid) << 32);
  // atomicAdd returns the old value: every ticket is handed out exactly once.
  ticket_hits[atomicAdd(&t->tickets, 1)] += 1;
  // Lock-free increments built on atomicCAS (an atomicCAS(p, 0, 0) is an atomic read).
  for (int seen = atomicCAS(&t->cas_count, 0, 0);;) {
    const int prev = atomicCAS(&t->cas_count, seen, seen + 1);
    if (prev == seen) break;
    seen = prev;
  }
  for (unsigned long long seen = atomicCAS(&t->cas_ull, 0ull, 0ull);;) {
    const unsigned long long prev = atomicCAS(&t->cas_ull, seen, seen + 5);
    if (prev == seen) break;
    seen = prev;
  }
  if (atomicMax(&t->i_max, -1) < gid) atomicAdd(bad_returns, 1);
}

// Writes each thread's coordinates into a 3D array covering the whole grid.
__global__ void coords_kernel(unsigned* cell_writer, int* cell_hits, int* bad_dims) {
  if (blockDim.x != 16 || blockDim.y != 8 || blockDim.z != 2 || gridDim.x != 3 ||
      gridDim.y != 2 || gridDim.z != 2) {
    atomicAdd(bad_dims, 1);
  }
  const unsigned gx = blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned gy = blockIdx.y * blockDim.y + threadIdx.y;
  const unsigned gz = blockIdx.z * blockDim.z + threadIdx.z;
  const unsigned width = gridDim.x * blockDim.x;
  const unsigned height = gridDim.y * blockDim.y;
  const unsigned cell = (gz * height + gy) * width + gx;
  atomicAdd(&cell_hits[cell], 1);
  cell_writer[cell] = threadIdx.x | threadIdx.y << 8 | threadIdx.z << 16 | blockIdx.x << 20 |
                      blockIdx.y << 24 | blockIdx.z << 28;
}

// Records the order in which a block's threads first run (single block, so a
// plain counter is race-free).
__global__ void order_kernel(unsigned* order, unsigned* next) {
  order[(*next)++] = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
}

// Three barriers per iteration, each separating a write phase from reads of
// other threads' writes; `errors` counts reads that saw stale data.
__global__ void barrier_loop_kernel(int iterations, int* errors) {
  GF_DYNAMIC_SHARED(int, cells);  // [0, n): phase A values, [n, 2n): phase C values
  const unsigned n = blockDim.x;
  const unsigned tid = threadIdx.x;
  int local_errors = 0;
  for (int it = 0; it < iterations; ++it) {
    if (it > 0) {
      const unsigned src = (tid + 3) % n;
      local_errors += cells[n + src] != static_cast<int>((it - 1) * 7 + (src + 1) % n);
    }
    cells[tid] = static_cast<int>(it * 7 + tid);
    __syncthreads();
    const int value = cells[(tid + 1) % n];
    local_errors += value != static_cast<int>(it * 7 + (tid + 1) % n);
    __syncthreads();
    cells[n + tid] = value;
    __syncthreads();
  }
  atomicAdd(errors, local_errors);
}

__global__ void bare_barrier_kernel(int iterations) {
  for (int it = 0; it < iterations; ++it) __syncthreads();
}

__global__ void divergent_kernel(int* constructed, int* destroyed) {
  LiveCounter live(constructed, destroyed);
  __syncthreads();
  if (threadIdx.x < 100) return;
  __syncthreads();
}

__global__ void throwing_kernel(int* constructed, int* destroyed) {
  LiveCounter live(constructed, destroyed);
  __syncthreads();
  if (blockIdx.x == 5 && threadIdx.x == 37) throw std::out_of_range("boom from thread 37");
  __syncthreads();
}

// Kernels keep arrays in locals; 64 KiB per thread must fit the fiber stacks
// and stay private to each thread across barriers.
__global__ void big_locals_kernel(int* errors) {
  unsigned char big[64 * 1024];
  std::memset(big, static_cast<int>(threadIdx.x & 0xff), sizeof big);
  __syncthreads();
  for (unsigned char byte : big) {
    if (byte != (threadIdx.x & 0xff)) {
      atomicAdd(errors, 1);
      break;
    }
  }
}

// Each fiber has its own floating-point modes (MXCSR / x87 control word).
__global__ void rounding_kernel(int* errors) {
  if (std::fegetround() != FE_TONEAREST) atomicAdd(errors, 1);
  if (threadIdx.x % 2) std::fesetround(FE_UPWARD);
  __syncthreads();
  if (std::fegetround() != (threadIdx.x % 2 ? FE_UPWARD : FE_TONEAREST)) atomicAdd(errors, 1);
}

__global__ void small_add_kernel(int* data) { atomicAdd(&data[threadIdx.x], 1); }

// ---------------------------------------------------------------------------
// Tests

void test_block_reduction() {
  constexpr unsigned kThreads = 256;
  const unsigned blocks = 97;
  const int n = static_cast<int>(kThreads * blocks * 3 + 37);
  std::vector<float> in(n);
  double expected = 0;
  for (int i = 0; i < n; ++i) {
    in[i] = static_cast<float>(i % 13 - 4);  // small integers: every partial sum is exact
    expected += in[i];
  }
  std::vector<float> out(blocks, -1.0f);
  int dirty_shared = 0;
  const float* in_ptr = in.data();
  float* out_ptr = out.data();
  int* dirty_ptr = &dirty_shared;
  gf::emu::launch(dim3(blocks), dim3(kThreads), kThreads * sizeof(float),
                  [=] { block_sum_kernel<kThreads>(in_ptr, n, out_ptr, dirty_ptr); });
  double total = 0;
  for (float partial : out) total += partial;
  CHECK(total == expected);
  CHECK(dirty_shared == 0);
}

void test_atomics() {
  const unsigned blocks = 64, threads = 256;
  const int total = static_cast<int>(blocks * threads);
  AtomicTargets t;
  std::vector<int> ticket_hits(total, 0);
  int bad_returns = 0;
  AtomicTargets* tp = &t;
  int* hits = ticket_hits.data();
  int* bad = &bad_returns;
  gf::emu::launch(dim3(blocks), dim3(threads), 0, [=] { atomics_kernel(tp, hits, bad); });
  CHECK(t.f_sum == static_cast<float>(total));
  CHECK(t.d_sum == 0.5 * total);
  CHECK(t.i_sum == 2 * total);
  CHECK(t.ll_sum == (static_cast<long long>(total) * (total - 1) / 2) << 20);
  CHECK(t.ull_sum == 3ull * total);
  CHECK(t.i_min == -1000);
  CHECK(t.i_max == total - 1);
  CHECK(t.ll_min == -(static_cast<long long>(total - 1) << 32));
  CHECK(t.ll_max == static_cast<long long>(total - 1) << 32);
  CHECK(t.cas_count == total);
  CHECK(t.cas_ull == 5ull * total);
  CHECK(t.tickets == total);
  for (int hit_count : ticket_hits) CHECK(hit_count == 1);
  CHECK(bad_returns == 0);
}

void test_3d_indexing() {
  const dim3 grid(3, 2, 2), block(16, 8, 2);
  const unsigned width = grid.x * block.x, height = grid.y * block.y, depth = grid.z * block.z;
  std::vector<unsigned> writer(width * height * depth, ~0u);
  std::vector<int> hits(writer.size(), 0);
  int bad_dims = 0;
  unsigned* writer_ptr = writer.data();
  int* hits_ptr = hits.data();
  int* bad_ptr = &bad_dims;
  gf::emu::launch(grid, block, 0, [=] { coords_kernel(writer_ptr, hits_ptr, bad_ptr); });
  CHECK(bad_dims == 0);
  for (unsigned z = 0; z < depth; ++z) {
    for (unsigned y = 0; y < height; ++y) {
      for (unsigned x = 0; x < width; ++x) {
        const unsigned cell = (z * height + y) * width + x;
        CHECK(hits[cell] == 1);
        const unsigned expected = x % block.x | (y % block.y) << 8 | (z % block.z) << 16 |
                                  (x / block.x) << 20 | (y / block.y) << 24 | (z / block.z) << 28;
        CHECK(writer[cell] == expected);
      }
    }
  }
}

void test_thread_order_x_fastest() {
  const dim3 block(8, 4, 2);
  std::vector<unsigned> order(block.x * block.y * block.z, ~0u);
  unsigned next = 0;
  unsigned* order_ptr = order.data();
  unsigned* next_ptr = &next;
  gf::emu::launch(dim3(1), block, 0, [=] { order_kernel(order_ptr, next_ptr); });
  CHECK(next == order.size());
  for (unsigned i = 0; i < order.size(); ++i) CHECK(order[i] == i);
}

void test_barrier_loop_timing() {
  const unsigned threads = 256;
  const int iterations = 1000;
  int errors = 0;
  int* errors_ptr = &errors;
  auto start = std::chrono::steady_clock::now();
  gf::emu::launch(dim3(1), dim3(threads), 2 * threads * sizeof(int),
                  [=] { barrier_loop_kernel(iterations, errors_ptr); });
  const double one_block = seconds_since(start);
  CHECK(errors == 0);

  // Pure barrier cost: each resume is two switches (scheduler -> fiber -> scheduler).
  const int bare_iterations = 20000;
  start = std::chrono::steady_clock::now();
  gf::emu::launch(dim3(1), dim3(threads), 0, [=] { bare_barrier_kernel(bare_iterations); });
  const double bare = seconds_since(start);
  const double switches = 2.0 * threads * (bare_iterations + 1);

  const unsigned blocks = 16;
  start = std::chrono::steady_clock::now();
  gf::emu::launch(dim3(blocks), dim3(threads), 2 * threads * sizeof(int),
                  [=] { barrier_loop_kernel(iterations, errors_ptr); });
  const double many_blocks = seconds_since(start);
  CHECK(errors == 0);

  std::printf("       1 block x %u threads x %d iterations x 3 barriers: %.1f ms\n", threads,
              iterations, one_block * 1e3);
  std::printf("       %u blocks of the same: %.1f ms\n", blocks, many_blocks * 1e3);
  std::printf("       bare barrier: %.1f ns per context switch (%.0f switches in %.1f ms)\n",
              bare / switches * 1e9, switches, bare * 1e3);
}

void test_divergent_barrier_throws() {
  int constructed = 0, destroyed = 0;
  int* c = &constructed;
  int* d = &destroyed;
  expect_throw<std::runtime_error>(
      [=] { gf::emu::launch(dim3(4), dim3(256), 0, [=] { divergent_kernel(c, d); }); },
      "divergent __syncthreads");
  CHECK(constructed > 0);
  CHECK(constructed == destroyed);  // fibers parked at the barrier were unwound
}

void test_exception_propagates() {
  int constructed = 0, destroyed = 0;
  int* c = &constructed;
  int* d = &destroyed;
  expect_throw<std::out_of_range>(
      [=] { gf::emu::launch(dim3(16), dim3(128), 64, [=] { throwing_kernel(c, d); }); },
      "boom from thread 37");
  CHECK(constructed == destroyed);
  // Thrown before any barrier, with most threads not started yet.
  expect_throw<std::runtime_error>(
      [] {
        gf::emu::launch(dim3(3), dim3(64), 0, [] {
          if (threadIdx.x == 1) throw std::runtime_error("early failure");
          __syncthreads();
        });
      },
      "early failure");
}

void test_bad_launch_configs() {
  auto noop = [] {};
  auto bad = [&](dim3 grid, dim3 block, std::size_t shared, const char* needle) {
    expect_throw<std::invalid_argument>([&] { gf::emu::launch(grid, block, shared, noop); },
                                        needle);
  };
  bad(dim3(1), dim3(0), 0, "block dimensions must be >= 1");
  bad(dim3(1), dim3(1025), 0, "per-dimension limits");
  bad(dim3(1), dim3(1, 1, 65), 0, "per-dimension limits");
  bad(dim3(1), dim3(32, 32, 2), 0, "2048 threads per block");
  bad(dim3(1), dim3(32), gf::emu::kMaxSharedBytes + 1, "dynamic shared memory");
  bad(dim3(1, 65536), dim3(32), 0, "gridDim=");

  bool ran = false;
  bool* ran_ptr = &ran;
  gf::emu::launch(dim3(0), dim3(32), 0, [=] { *ran_ptr = true; });
  gf::emu::launch(dim3(4, 0, 1), dim3(32), 0, [=] { *ran_ptr = true; });
  CHECK(!ran);  // an empty grid is a no-op

  gf::emu::launch(dim3(1), dim3(1024), gf::emu::kMaxSharedBytes, noop);  // the limits themselves are fine

  expect_throw<std::logic_error>(
      [&] { gf::emu::launch(dim3(2), dim3(4), 0, [&] { gf::emu::launch(1, 1, 0, noop); }); },
      "from inside a kernel");
  expect_throw<std::logic_error>([] { __syncthreads(); }, "outside a gf::emu::launch");
}

void test_big_locals() {
  int errors = 0;
  int* errors_ptr = &errors;
  gf::emu::launch(dim3(4), dim3(256), 0, [=] { big_locals_kernel(errors_ptr); });
  CHECK(errors == 0);
}

void test_rounding_mode_per_fiber() {
  int errors = 0;
  int* errors_ptr = &errors;
  gf::emu::launch(dim3(2), dim3(64), 0, [=] { rounding_kernel(errors_ptr); });
  CHECK(errors == 0);
  CHECK(std::fegetround() == FE_TONEAREST);  // the launching thread's mode is untouched
}

void test_many_small_launches() {
  const int launches = 500;
  std::vector<int> data(64, 0);
  int* data_ptr = data.data();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < launches; ++i) {
    gf::emu::launch(dim3(4), dim3(64), 256, [=] { small_add_kernel(data_ptr); });
  }
  const double elapsed = seconds_since(start);
  for (int value : data) CHECK(value == 4 * launches);
  std::printf("       %.1f us per launch of 4 blocks x 64 threads\n", elapsed / launches * 1e6);
}

}  // namespace

int main() {
  run_test("block tree reduction with dynamic shared memory", test_block_reduction);
  run_test("atomics from many blocks", test_atomics);
  run_test("3D block and grid indexing", test_3d_indexing);
  run_test("threads start in threadIdx.x-fastest order", test_thread_order_x_fastest);
  run_test("1000 iterations x 3 barriers x 256 threads", test_barrier_loop_timing);
  run_test("divergent __syncthreads throws", test_divergent_barrier_throws);
  run_test("exceptions propagate out of launch", test_exception_propagates);
  run_test("bad launch configurations", test_bad_launch_configs);
  run_test("64 KiB of locals per thread", test_big_locals);
  run_test("rounding mode is per fiber", test_rounding_mode_per_fiber);
  run_test("many small launches", test_many_small_launches);
  // The failures above must leave the runtime usable.
  run_test("reduction again after failures", test_block_reduction);
  std::printf("emu selftest: %d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
