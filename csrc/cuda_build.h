// Glue for building a kernel family's .cuh with nvcc: the macros the .cuh expects
// (GF_DYNAMIC_SHARED, GF_ALLOW_SMEM, GF_LAUNCH) and error checking. csrc/emu_build.h is the
// emulated twin.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#define GF_DYNAMIC_SHARED(type, name)                          \
  extern __shared__ __align__(16) unsigned char gf_smem_raw[]; \
  type* name = reinterpret_cast<type*>(gf_smem_raw)

namespace gf {

inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

inline int multiprocessor_count() {
  int device = 0, count = 0;
  cuda_check(cudaGetDevice(&device), "cudaGetDevice");
  cuda_check(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device),
             "cudaDeviceGetAttribute");
  return count;
}

}  // namespace gf

#define GF_ALLOW_SMEM(kernel, bytes)                                                          \
  ::gf::cuda_check(                                                                           \
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), \
      "cudaFuncSetAttribute")
#define GF_LAUNCH(kernel, grid, block, smem, stream, args)                  \
  do {                                                                      \
    kernel<<<grid, block, smem, static_cast<cudaStream_t>(stream)>>>(args); \
    ::gf::cuda_check(cudaGetLastError(), "kernel launch (" #kernel ")");    \
  } while (0)
