// Definitions shared by every kernel family, host and device.
#pragma once
#include <cstdint>

#if defined(__CUDACC__) || defined(GF_EMULATED_CUDA)
#define GF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GF_HOST_DEVICE inline
#endif

namespace gf {
// Pointers cross the Python boundary as integers (destination passing: torch allocates).
using ptr_t = std::uintptr_t;
enum class DType : int { Float32 = 0, Float64 = 1 };
}  // namespace gf
