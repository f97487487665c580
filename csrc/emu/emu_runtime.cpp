// Scheduler and context switching for the emulated CUDA backend (emu_runtime.h).
//
// Each worker OS thread owns one fiber per CUDA thread of a block. For every
// block it runs "passes": each live fiber is resumed in turn (threadIdx.x
// fastest) and runs until it reaches __syncthreads() or returns. A pass in
// which all fibers reached the barrier releases it; a pass in which all
// returned ends the block; anything in between is a divergent barrier.
//
// On x86-64 the switch is a few instructions of hand-written assembly (no
// syscalls, unlike swapcontext); elsewhere ucontext is used. Define
// GF_EMU_USE_UCONTEXT to force the ucontext path on x86-64 (for testing it).
#include "emu/emu_runtime.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__x86_64__) && !defined(GF_EMU_USE_UCONTEXT)
#define GF_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>

#include <cerrno>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define GF_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GF_EMU_ASAN 1
#endif
#endif
#ifdef GF_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#ifdef GF_EMU_ASM_SWITCH
// gf_emu_switch(save_sp, load_sp): saves the callee-saved state of the caller
// on its stack, stores the stack pointer to *save_sp, switches to load_sp and
// restores the state saved there. Caller-saved registers need no saving: the
// compiler already assumes a call clobbers them. It returns with pop + jmp
// rather than ret: the return-stack predictor always misses across a switch,
// whereas the indirect-branch predictor learns the two alternating targets
// (about 10 ns instead of 13 ns per switch). Neither form survives CET shadow
// stacks, which would have to be disabled for a process using this backend.
//
// Saved frame, from the saved stack pointer upwards:
//   +0 MXCSR (4 bytes), +4 x87 control word (2 bytes, padded to 8),
//   +8 r15, +16 r14, +24 r13, +32 r12, +40 rbx, +48 rbp, +56 return address.
//
// A new fiber's frame "returns" into gf_emu_trampoline, which calls the entry
// function held in r13 with the fiber held in r12 as its argument.
extern "C" __attribute__((visibility("hidden"))) void gf_emu_switch(void** save_sp,
                                                                    void* load_sp);
extern "C" __attribute__((visibility("hidden"))) void gf_emu_trampoline();

asm(R"(
    .pushsection .text
    .globl gf_emu_switch
    .hidden gf_emu_switch
    .type gf_emu_switch, @function
    .p2align 4
gf_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    popq %rcx
    jmpq *%rcx
    .size gf_emu_switch, .-gf_emu_switch

    .globl gf_emu_trampoline
    .hidden gf_emu_trampoline
    .type gf_emu_trampoline, @function
    .p2align 4
gf_emu_trampoline:
    .cfi_startproc
    .cfi_undefined rip
    movq %r12, %rdi
    callq *%r13
    ud2
    .cfi_endproc
    .size gf_emu_trampoline, .-gf_emu_trampoline
    .popsection
)");
#endif

namespace gf::emu {
namespace {

struct Fiber;
[[noreturn]] void fiber_entry(Fiber* fiber);

constexpr std::size_t kDefaultFiberStackBytes = 256 * 1024;

std::size_t env_or(const char* name, std::size_t fallback) {
  const char* text = std::getenv(name);
  if (!text || !*text) return fallback;
  char* end = nullptr;
  unsigned long long value = std::strtoull(text, &end, 10);
  return (*end == '\0' && value > 0) ? static_cast<std::size_t>(value) : fallback;
}

std::size_t page_size() {
  static const std::size_t size = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return size;
}

// GF_EMU_STACK_KB overrides the fiber stack size (kernels with large local
// arrays), GF_EMU_NUM_THREADS caps the worker OS threads (e.g. 1 for debugging).
std::size_t fiber_stack_bytes() {
  static const std::size_t bytes = [] {
    std::size_t requested = env_or("GF_EMU_STACK_KB", kDefaultFiberStackBytes / 1024) * 1024;
    return (requested + page_size() - 1) / page_size() * page_size();
  }();
  return bytes;
}

unsigned max_workers() {
  static const unsigned count = [] {
    unsigned hardware = std::max(1u, std::thread::hardware_concurrency());
    return static_cast<unsigned>(env_or("GF_EMU_NUM_THREADS", hardware));
  }();
  return count;
}

// Usable region [base, base + size), with an inaccessible guard page below it so
// that a stack overflow faults instead of corrupting a neighbour.
struct Stack {
  char* base = nullptr;
  std::size_t size = 0;
};

// Stacks are mmap'ed once and recycled across blocks and launches: workers are
// short-lived threads, and mapping plus first-touch faults for hundreds of
// stacks per launch would dominate small launches.
class StackPool {
 public:
  static StackPool& instance() {
    static StackPool* pool = new StackPool;  // never destroyed: workers may outlive statics
    return *pool;
  }

  Stack acquire() {
    {
      std::lock_guard lock(mutex_);
      if (!free_.empty()) {
        Stack stack = free_.back();
        free_.pop_back();
        return stack;
      }
    }
    return map_stack();
  }

  void release(const Stack& stack) {
    std::lock_guard lock(mutex_);
    free_.push_back(stack);
  }

 private:
  static Stack map_stack() {
    const std::size_t guard = page_size();
    const std::size_t size = fiber_stack_bytes();
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
#ifdef MAP_STACK
    flags |= MAP_STACK;
#endif
    void* mapping = mmap(nullptr, guard + size, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (mapping == MAP_FAILED) throw std::bad_alloc();
    if (mprotect(mapping, guard, PROT_NONE) != 0) {
      munmap(mapping, guard + size);
      throw std::bad_alloc();
    }
    return Stack{static_cast<char*>(mapping) + guard, size};
  }

  std::mutex mutex_;
  std::vector<Stack> free_;
};

#ifdef GF_EMU_ASM_SWITCH
struct MachineContext {
  void* sp = nullptr;
};

void init_machine_context(MachineContext& context, const Stack& stack, Fiber* fiber) {
  auto top = reinterpret_cast<std::uintptr_t>(stack.base + stack.size) & ~std::uintptr_t{15};
  // The trampoline starts with rsp == top (16-aligned), so its `call` enters
  // fiber_entry with rsp + 8 16-aligned, as the SysV ABI requires.
  auto* frame = reinterpret_cast<std::uint64_t*>(top - 8 * sizeof(std::uint64_t));
  std::uint32_t mxcsr;
  std::uint16_t fpu_control;
  // New fibers start with the floating-point modes of the launching thread.
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpu_control));
  frame[0] = mxcsr | (std::uint64_t{fpu_control} << 32);
  frame[1] = 0;                                                     // r15
  frame[2] = 0;                                                     // r14
  frame[3] = reinterpret_cast<std::uint64_t>(&fiber_entry);         // r13
  frame[4] = reinterpret_cast<std::uint64_t>(fiber);                // r12
  frame[5] = 0;                                                     // rbx
  frame[6] = 0;  // rbp: a null frame pointer ends frame-pointer stack walks
  frame[7] = reinterpret_cast<std::uint64_t>(&gf_emu_trampoline);
  context.sp = frame;
}

inline void switch_context(MachineContext& from, const MachineContext& to) {
  gf_emu_switch(&from.sp, to.sp);
}
#else
struct MachineContext {
  ucontext_t uc;
};

// makecontext only passes int arguments, so the pointer travels in two halves.
void ucontext_entry(unsigned high, unsigned low) {
  auto bits = (static_cast<std::uint64_t>(high) << 32) | low;
  fiber_entry(reinterpret_cast<Fiber*>(static_cast<std::uintptr_t>(bits)));
}

void init_machine_context(MachineContext& context, const Stack& stack, Fiber* fiber) {
  if (getcontext(&context.uc) != 0) throw std::system_error(errno, std::system_category());
  context.uc.uc_stack.ss_sp = stack.base;
  context.uc.uc_stack.ss_size = stack.size;
  context.uc.uc_link = nullptr;
  auto bits = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(fiber));
  makecontext(&context.uc, reinterpret_cast<void (*)()>(&ucontext_entry), 2,
              static_cast<unsigned>(bits >> 32), static_cast<unsigned>(bits));
}

inline void switch_context(MachineContext& from, const MachineContext& to) {
  swapcontext(&from.uc, &to.uc);
}
#endif

// Thrown out of __syncthreads() to unwind the fibers still waiting at a barrier
// when their block has failed. Deliberately not a std::exception, so that kernel
// code catching std::exception does not swallow it.
struct FiberCancelled {};

// A fiber keeps kAtBarrier until it is resumed, so that a failing block knows
// which fibers are parked inside __syncthreads().
enum class FiberState : unsigned char { kNotStarted, kAtBarrier, kDone };

struct LaunchState {
  dim3 grid;
  dim3 block;
  std::size_t shared_bytes;
  detail::KernelThunk thunk;
  const void* body;
  std::uint64_t num_blocks;
  unsigned threads_per_block;

  std::atomic<std::uint64_t> next_block{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex{};
  std::exception_ptr error{};

  void record_error(std::exception_ptr e) {
    std::lock_guard lock(error_mutex);
    if (!error) error = std::move(e);
    failed.store(true, std::memory_order_relaxed);
  }
};

class Worker;

struct Fiber final : FiberContext {
  Worker* worker = nullptr;
  Stack stack;
  MachineContext machine;
  FiberState state = FiberState::kNotStarted;
#ifdef GF_EMU_ASAN
  void* asan_fake_stack = nullptr;
#endif

  [[noreturn]] void main();
  void barrier();

 private:
  void run_body() noexcept;
  void yield_to_scheduler();
  [[noreturn]] void finish();
};

// Stacks leased from the pool for the lifetime of a worker.
class StackLease {
 public:
  explicit StackLease(std::size_t count) { stacks_.reserve(count); }
  StackLease(const StackLease&) = delete;
  StackLease& operator=(const StackLease&) = delete;
  ~StackLease() {
    for (const Stack& stack : stacks_) StackPool::instance().release(stack);
  }

  // At most `count` times: the push then cannot reallocate, so cannot throw.
  const Stack& acquire() { return stacks_.emplace_back(StackPool::instance().acquire()); }

 private:
  std::vector<Stack> stacks_;
};

struct AlignedFree {
  void operator()(unsigned char* p) const { ::operator delete(p, std::align_val_t{64}); }
};

// Runs blocks of one launch on the calling OS thread.
class Worker {
 public:
  explicit Worker(LaunchState& launch)
      : launch_(launch),
        fibers_(new Fiber[launch.threads_per_block]),
        shared_(static_cast<unsigned char*>(
            ::operator new(launch.shared_bytes, std::align_val_t{64}))),
        stacks_(launch.threads_per_block) {
    const dim3 block = launch.block;
    Fiber* fiber = fibers_.get();
    for (unsigned z = 0; z < block.z; ++z) {
      for (unsigned y = 0; y < block.y; ++y) {
        for (unsigned x = 0; x < block.x; ++x, ++fiber) {
          fiber->thread_idx = dim3(x, y, z);
          fiber->block_dim = block;
          fiber->grid_dim = launch.grid;
          fiber->shared_mem = shared_.get();
          fiber->worker = this;
        }
      }
    }
    for (unsigned i = 0; i < launch.threads_per_block; ++i) fibers_[i].stack = stacks_.acquire();
  }

  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Runs blocks until none are left or some block failed.
  void run() {
    while (!launch_.failed.load(std::memory_order_relaxed)) {
      std::uint64_t block = launch_.next_block.fetch_add(1, std::memory_order_relaxed);
      if (block >= launch_.num_blocks) return;
      run_block(block);
      if (error_) {
        launch_.record_error(std::move(error_));
        return;
      }
    }
  }

 private:
  friend struct Fiber;

  void run_block(std::uint64_t linear) {
    const dim3 grid = launch_.grid;
    const dim3 block_idx(static_cast<unsigned>(linear % grid.x),
                         static_cast<unsigned>(linear / grid.x % grid.y),
                         static_cast<unsigned>(linear / grid.x / grid.y));
    std::memset(shared_.get(), 0, launch_.shared_bytes);
    const unsigned n = launch_.threads_per_block;
    for (unsigned i = 0; i < n; ++i) {
      Fiber& fiber = fibers_[i];
      fiber.block_idx = block_idx;
      fiber.state = FiberState::kNotStarted;
#ifdef GF_EMU_ASAN
      // The previous block's fibers were abandoned mid-frame; clear their poison.
      __asan_unpoison_memory_region(fiber.stack.base, fiber.stack.size);
#endif
      init_machine_context(fiber.machine, fiber.stack, &fiber);
    }
    cancelling_ = false;

    for (;;) {
      unsigned returned = 0;
      for (unsigned i = 0; i < n; ++i) {
        resume(fibers_[i]);
        if (error_) {
          cancel_waiting_fibers();
          return;
        }
        returned += fibers_[i].state == FiberState::kDone;
      }
      if (returned == n) return;
      if (returned != 0) {
        error_ = std::make_exception_ptr(std::runtime_error(
            "divergent __syncthreads: in block (" + std::to_string(block_idx.x) + "," +
            std::to_string(block_idx.y) + "," + std::to_string(block_idx.z) + ") " +
            std::to_string(returned) + " of " + std::to_string(n) +
            " threads returned while the others wait at a barrier"));
        cancel_waiting_fibers();
        return;
      }
    }
  }

  // Unwinds the fibers parked at a barrier: __syncthreads() throws
  // FiberCancelled in them, so their destructors run.
  void cancel_waiting_fibers() {
    cancelling_ = true;
    for (unsigned i = 0; i < launch_.threads_per_block; ++i) {
      if (fibers_[i].state == FiberState::kAtBarrier) resume(fibers_[i]);
    }
  }

  void resume(Fiber& fiber) {
    detail::current_fiber = &fiber;
#ifdef GF_EMU_ASAN
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(&fake_stack, fiber.stack.base, fiber.stack.size);
    switch_context(scheduler_, fiber.machine);
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
    switch_context(scheduler_, fiber.machine);
#endif
  }

  LaunchState& launch_;
  std::unique_ptr<Fiber[]> fibers_;  // never moved: contexts may point into them
  std::unique_ptr<unsigned char, AlignedFree> shared_;
  StackLease stacks_;
  MachineContext scheduler_;
  bool cancelling_ = false;
  std::exception_ptr error_;  // first failure of the current block
#ifdef GF_EMU_ASAN
  const void* scheduler_stack_bottom_ = nullptr;
  std::size_t scheduler_stack_size_ = 0;
#endif
};

void Fiber::barrier() {
  if (!worker->cancelling_) {
    state = FiberState::kAtBarrier;
    yield_to_scheduler();
  }
  if (worker->cancelling_) throw FiberCancelled{};
}

void Fiber::yield_to_scheduler() {
#ifdef GF_EMU_ASAN
  __sanitizer_start_switch_fiber(&asan_fake_stack, worker->scheduler_stack_bottom_,
                                 worker->scheduler_stack_size_);
  switch_context(machine, worker->scheduler_);
  __sanitizer_finish_switch_fiber(asan_fake_stack, nullptr, nullptr);
#else
  switch_context(machine, worker->scheduler_);
#endif
}

void Fiber::finish() {
  state = FiberState::kDone;
#ifdef GF_EMU_ASAN
  // A null fake-stack slot tells ASan this stack is left for good.
  __sanitizer_start_switch_fiber(nullptr, worker->scheduler_stack_bottom_,
                                 worker->scheduler_stack_size_);
#endif
  switch_context(machine, worker->scheduler_);
  __builtin_unreachable();  // the scheduler re-initialises a finished fiber before resuming it
}

void Fiber::run_body() noexcept {
  try {
    worker->launch_.thunk(worker->launch_.body);
  } catch (const FiberCancelled&) {
  } catch (...) {
    if (!worker->error_) worker->error_ = std::current_exception();
  }
}

void Fiber::main() {
#ifdef GF_EMU_ASAN
  // Learns the scheduler's stack, needed to annotate the switches back to it.
  __sanitizer_finish_switch_fiber(nullptr, &worker->scheduler_stack_bottom_,
                                  &worker->scheduler_stack_size_);
#endif
  run_body();
  finish();  // nothing with a destructor may be alive here: this frame is abandoned
}

void fiber_entry(Fiber* fiber) { fiber->main(); }

void run_worker(LaunchState& launch) noexcept {
  try {
    Worker worker(launch);
    worker.run();
  } catch (...) {
    launch.record_error(std::current_exception());
  }
  detail::current_fiber = nullptr;
}

std::string dims_text(dim3 d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

void validate(dim3 grid, dim3 block, std::size_t shared_bytes) {
  const std::string where = "gf::emu::launch: ";
  if (block.x == 0 || block.y == 0 || block.z == 0) {
    throw std::invalid_argument(where + "block dimensions must be >= 1, got blockDim=" +
                                dims_text(block));
  }
  if (block.x > 1024 || block.y > 1024 || block.z > 64) {
    throw std::invalid_argument(where + "blockDim=" + dims_text(block) +
                                " exceeds the per-dimension limits (1024,1024,64)");
  }
  const std::uint64_t threads = std::uint64_t{block.x} * block.y * block.z;
  if (threads > kMaxThreadsPerBlock) {
    throw std::invalid_argument(where + std::to_string(threads) +
                                " threads per block exceeds the limit of " +
                                std::to_string(kMaxThreadsPerBlock));
  }
  if (shared_bytes > kMaxSharedBytes) {
    throw std::invalid_argument(where + std::to_string(shared_bytes) +
                                " bytes of dynamic shared memory exceeds the limit of " +
                                std::to_string(kMaxSharedBytes));
  }
  if (grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    throw std::invalid_argument(where + "gridDim=" + dims_text(grid) +
                                " exceeds the limits (2^31-1,65535,65535)");
  }
}

}  // namespace

namespace detail {

void launch_impl(dim3 grid, dim3 block, std::size_t shared_bytes, KernelThunk thunk,
                 const void* body) {
  validate(grid, block, shared_bytes);
  if (current_fiber) {
    throw std::logic_error("gf::emu::launch called from inside a kernel "
                           "(dynamic parallelism is not supported)");
  }
  const std::uint64_t num_blocks = std::uint64_t{grid.x} * grid.y * grid.z;
  if (num_blocks == 0) return;

  LaunchState launch{grid, block, shared_bytes, thunk, body, num_blocks, block.x * block.y * block.z};
  const auto num_workers =
      static_cast<unsigned>(std::min<std::uint64_t>(max_workers(), num_blocks));
  std::vector<std::thread> helpers;
  helpers.reserve(num_workers - 1);
  for (unsigned i = 1; i < num_workers; ++i) {
    try {
      helpers.emplace_back(run_worker, std::ref(launch));
    } catch (const std::system_error&) {
      break;  // out of OS threads: the ones we have still finish the grid
    }
  }
  run_worker(launch);
  for (std::thread& helper : helpers) helper.join();
  if (launch.error) std::rethrow_exception(launch.error);
}

}  // namespace detail
}  // namespace gf::emu

void __syncthreads() {
  const gf::emu::FiberContext* context = gf::emu::detail::current_fiber;
  if (!context) throw std::logic_error("__syncthreads() called outside a gf::emu::launch");
  // current_fiber is const only to keep kernels from writing their built-ins.
  const_cast<gf::emu::Fiber&>(static_cast<const gf::emu::Fiber&>(*context)).barrier();
}
