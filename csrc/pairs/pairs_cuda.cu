// CUDA build of pairs_kernels.cuh.
#include "cuda_build.h"

#define GF_KERNEL_NS cuda_impl
#include "pairs/pairs_kernels.cuh"

namespace gf::pairs {
void components_cuda(const ComponentsParams& p) { cuda_impl::components(p); }
void assign_cuda(const AssignParams& p) { cuda_impl::assign(p); }
void count_cuda(const CountParams& p) { cuda_impl::count(p); }
}  // namespace gf::pairs
