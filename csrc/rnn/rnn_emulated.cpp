// Host-compiled build of rnn_kernels.cuh on the emulated CUDA runtime (csrc/emu), so the GPU
// kernel's logic runs in the test suite on machines without a GPU.
#define GF_EMULATED_CUDA 1
#include <algorithm>
#include <thread>

#include "emu/emu_runtime.h"

namespace gf::rnn::emulated_impl {
inline int multiprocessor_count() { return int(std::max(1u, std::thread::hardware_concurrency())); }
}  // namespace gf::rnn::emulated_impl

#define GF_KERNEL_NS emulated_impl
#define GF_ALLOW_SMEM(kernel, bytes) (void)(kernel)
#define GF_LAUNCH(kernel, grid, block, smem, stream, args) \
  ::gf::emu::launch(grid, block, smem, [=] { kernel(args); })
#include "rnn/rnn_kernels.cuh"

namespace gf::rnn {
void forward_emulated(const ForwardParams& p) { emulated_impl::forward(p); }
void backward_emulated(const BackwardParams& p) { emulated_impl::backward(p); }
int64_t max_hidden_gpu_kernel() { return emulated_impl::kMaxHidden; }
}  // namespace gf::rnn
