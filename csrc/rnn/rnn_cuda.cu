// CUDA build of rnn_kernels.cuh.
#include "cuda_build.h"

#define GF_KERNEL_NS cuda_impl
#include "rnn/rnn_kernels.cuh"

namespace gf::rnn {
void forward_cuda(const ForwardParams& p) { cuda_impl::forward(p); }
void backward_cuda(const BackwardParams& p) { cuda_impl::backward(p); }
}  // namespace gf::rnn
