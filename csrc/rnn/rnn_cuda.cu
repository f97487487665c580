// CUDA build of rnn_kernels.cuh.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#define GF_DYNAMIC_SHARED(type, name)                              \
  extern __shared__ __align__(16) unsigned char gf_smem_raw[];     \
  type* name = reinterpret_cast<type*>(gf_smem_raw)

namespace gf::rnn::cuda_impl {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

inline int multiprocessor_count() {
  int device = 0, count = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  return count;
}

}  // namespace gf::rnn::cuda_impl

#define GF_KERNEL_NS cuda_impl
#define GF_ALLOW_SMEM(kernel, bytes)                                                              \
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),    \
        "cudaFuncSetAttribute")
#define GF_LAUNCH(kernel, grid, block, smem, stream, args)                       \
  do {                                                                           \
    kernel<<<grid, block, smem, static_cast<cudaStream_t>(stream)>>>(args);      \
    check(cudaGetLastError(), "recurrence kernel launch");                       \
  } while (0)
#include "rnn/rnn_kernels.cuh"

namespace gf::rnn {
void forward_cuda(const ForwardParams& p) { cuda_impl::forward(p); }
void backward_cuda(const BackwardParams& p) { cuda_impl::backward(p); }
}  // namespace gf::rnn
