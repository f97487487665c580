// Host-compiled build of rnn_kernels.cuh on the emulated CUDA runtime (csrc/emu), so the GPU
// kernel's logic runs in the test suite on machines without a GPU.
#include "emu_build.h"

#define GF_KERNEL_NS emulated_impl
#include "rnn/rnn_kernels.cuh"

namespace gf::rnn {
void forward_emulated(const ForwardParams& p) { emulated_impl::forward(p); }
void backward_emulated(const BackwardParams& p) { emulated_impl::backward(p); }
int64_t max_hidden_gpu_kernel() { return emulated_impl::kMaxHidden; }
}  // namespace gf::rnn
