// Host-compiled build of pairs_kernels.cuh on the emulated CUDA runtime (csrc/emu), so the GPU
// kernels' logic runs in the test suite on machines without a GPU.
#include "emu_build.h"

#define GF_KERNEL_NS emulated_impl
#include "pairs/pairs_kernels.cuh"

namespace gf::pairs {
void components_emulated(const ComponentsParams& p) { emulated_impl::components(p); }
void assign_emulated(const AssignParams& p) { emulated_impl::assign(p); }
void count_emulated(const CountParams& p) { emulated_impl::count(p); }
int64_t components_workspace_bytes(const ComponentsParams& p) { return emulated_impl::components_workspace(p); }
int64_t assign_workspace_bytes(const AssignParams& p) { return emulated_impl::assign_workspace(p); }
int64_t count_workspace_bytes(const CountParams& p) { return emulated_impl::count_workspace(p); }
}  // namespace gf::pairs
