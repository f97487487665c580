// Pairwise-distance kernels with an inclusive Euclidean radius, torch-free API:
//   components: connected components of the eps-graph (DBSCAN with min_samples = 1),
//   assign:     nearest center within eps,
//   count:      pairs i < j within each of several radii, optionally split by group label.
// Points are float32 [N, D] with strides in elements. Sizes and strides are in elements.
//
// Exactness. A pair (i, j) is within a radius r when
//     d2(i, j) = sum_k (double(x_ik) - double(x_jk))^2  <=  r * r        (all in float64),
// the float64 evaluation of the exact distance of the float32 inputs (what sklearn's KD-tree
// and the references in grokfast/ref.py compute). The kernels first evaluate the GEMM form
// |x|^2 + |y|^2 - 2 x.y in float32 on centred, power-of-two-scaled copies and decide only the
// pairs that lie outside a guard band derived from a float32 rounding-error bound; pairs inside
// the band are recomputed in float64 from the original inputs (see pairs_common.h).
#pragma once
#include <cstdint>

#include "common.h"

namespace gf::pairs {

// A float32 point set [n, d]; element (i, k) lives at data[i * stride_n + k * stride_d].
struct Points {
  ptr_t data = 0;
  int64_t n = 0, d = 0;
  int64_t stride_n = 0, stride_d = 1;
};

// Optional diagnostics, int64 [kStats] (zeroed by the caller), accumulated by every backend:
enum Stat : int {
  kStatExact = 0,        // pair decisions made by the float64 recomputation (guard band)
  kStatTiles = 1,        // tiles whose distances were computed
  kStatTilesSkipped = 2, // tiles skipped (already one component / cannot reach)
  kStatGroups = 3,       // CPU components: groups after the leader pass (0 elsewhere)
  kStats = 4,
};

struct ComponentsParams {
  Points x;
  double eps = 0;     // >= 0 (may be +inf)
  ptr_t labels = 0;   // int64 [N] out: component ids numbered by first appearance
  ptr_t workspace = 0;  // GPU backends: components_workspace_bytes() bytes on the device
  int64_t workspace_bytes = 0;
  ptr_t stats = 0;    // int64 [kStats] or 0 (device memory for the CUDA backend)
  ptr_t stream = 0;   // cudaStream_t for the CUDA backend
  int num_threads = 0;  // CPU: 0 = all hardware threads (or GROKFAST_NUM_THREADS)
};

struct AssignParams {
  Points x;           // [N, D]
  Points centers;     // [C, D]
  double eps = 0;
  ptr_t index = 0;     // int64 [N] out: nearest center with d <= eps (ties: lowest index), -1 if none
  ptr_t distance = 0;  // float32 [N] out: its distance (float64 value rounded), +inf if none
  ptr_t workspace = 0;
  int64_t workspace_bytes = 0;
  ptr_t stats = 0;
  ptr_t stream = 0;
  int num_threads = 0;
};

struct CountParams {
  Points x;
  int64_t R = 0;
  ptr_t radii = 0;        // float64 [R] (each >= 0), on the device of x
  ptr_t groups = 0;       // int64 [N] group labels (any values) or 0
  int64_t groups_stride = 1;
  ptr_t counts = 0;       // int64 [R] out: pairs i < j with d <= radii[r]
  ptr_t counts_same = 0;  // int64 [R] out (needs groups): of those, pairs with equal labels
  // Within-class mode (C > 0): points sorted by class, class c = [offsets[c], offsets[c + 1]);
  // only same-class pairs are compared and counted (groups unused). tile_offsets[c] is the first
  // tile pair of class c, with nb = ceil(size / 64) blocks giving nb (nb + 1) / 2 tile pairs
  // (tile_offsets[C] = total_tiles, also given on the host for the GPU launch).
  int64_t C = 0;
  ptr_t class_offsets = 0;  // int64 [C + 1], on the device of x
  ptr_t tile_offsets = 0;   // int64 [C + 1], on the device of x
  int64_t total_tiles = 0;
  ptr_t mask = 0;       // uint8 [N] or 0: counts keep pairs with both points in the mask
  ptr_t neighbors = 0;  // int64 [N, R] out or 0 (zeroed by the caller): per point, same-class
                        // points within each radius (those in the mask, when given)
  ptr_t workspace = 0;
  int64_t workspace_bytes = 0;
  ptr_t stats = 0;
  ptr_t stream = 0;
  int num_threads = 0;
};

void components_cpu(const ComponentsParams& p);
void assign_cpu(const AssignParams& p);
void count_cpu(const CountParams& p);

// The CUDA kernels run on host threads (csrc/emu); workspace in host memory.
void components_emulated(const ComponentsParams& p);
void assign_emulated(const AssignParams& p);
void count_emulated(const CountParams& p);

// Workspace the GPU backends need (bytes); the same for CUDA and emulated CUDA.
int64_t components_workspace_bytes(const ComponentsParams& p);
int64_t assign_workspace_bytes(const AssignParams& p);
int64_t count_workspace_bytes(const CountParams& p);
// Limits of the GPU kernels (int32 point indices, radii staged in shared memory).
constexpr int64_t kMaxPointsGpu = (int64_t(1) << 31) - 1;
constexpr int64_t kMaxRadiiGpu = 1024;

#ifdef GROKFAST_WITH_CUDA
void components_cuda(const ComponentsParams& p);
void assign_cuda(const AssignParams& p);
void count_cuda(const CountParams& p);
#endif

}  // namespace gf::pairs
