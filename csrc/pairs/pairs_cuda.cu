// CUDA build of pairs_kernels.cuh.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#define GF_DYNAMIC_SHARED(type, name)                              \
  extern __shared__ __align__(16) unsigned char gf_smem_raw[];     \
  type* name = reinterpret_cast<type*>(gf_smem_raw)

namespace gf::pairs::cuda_impl {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

}  // namespace gf::pairs::cuda_impl

#define GF_KERNEL_NS cuda_impl
#define GF_ALLOW_SMEM(kernel, bytes)                                                              \
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),    \
        "cudaFuncSetAttribute")
#define GF_LAUNCH(kernel, grid, block, smem, stream, args)                       \
  do {                                                                           \
    kernel<<<grid, block, smem, static_cast<cudaStream_t>(stream)>>>(args);      \
    check(cudaGetLastError(), "pair kernel launch (" #kernel ")");               \
  } while (0)
#include "pairs/pairs_kernels.cuh"

namespace gf::pairs {
void components_cuda(const ComponentsParams& p) { cuda_impl::components(p); }
void assign_cuda(const AssignParams& p) { cuda_impl::assign(p); }
void count_cuda(const CountParams& p) { cuda_impl::count(p); }
}  // namespace gf::pairs
