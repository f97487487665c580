// Glue for building a kernel family's .cuh with the host compiler on the emulated CUDA
// runtime (csrc/emu): the twin of csrc/cuda_build.h.
#pragma once
#define GF_EMULATED_CUDA 1
#include <algorithm>
#include <thread>

#include "emu/emu_runtime.h"

namespace gf {
inline int multiprocessor_count() { return int(std::max(1u, std::thread::hardware_concurrency())); }
}  // namespace gf

#define GF_ALLOW_SMEM(kernel, bytes) (void)(kernel)
#define GF_LAUNCH(kernel, grid, block, smem, stream, args) \
  ::gf::emu::launch(grid, block, smem, [=] { kernel(args); })
