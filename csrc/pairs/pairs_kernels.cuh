// The GPU pair kernels, written once and compiled twice: by nvcc (pairs_cuda.cu) and by the
// host compiler against csrc/emu (pairs_emulated.cpp). The including file defines GF_KERNEL_NS
// and includes csrc/cuda_build.h or csrc/emu_build.h (GF_LAUNCH, GF_ALLOW_SMEM,
// GF_DYNAMIC_SHARED).
//
// Preparation (k_mean, k_max_norm, k_pack) writes centred, power-of-two-scaled float32 copies
// with norms and guards to the workspace (pairs_common.h). Tiles of 64 x 64 points are staged
// in shared memory in slices of 16 dimensions; each of the 256 threads accumulates a 4 x 4
// register block (rows ty + 16a, columns tx + 16b, so shared reads are conflict-free), then
// decides its 16 pairs: outside the guard band from the float32 GEMM expansion, inside it from
// the float64 recomputation on the original inputs.
//   components: one block per tile pair (bi <= bj); the block first finds the roots of its 128
//     points and returns when they are all one component; edges are joined in a lock-free
//     union-find (atomicCAS, higher root linked under the lower, path halving). Roots are then
//     the smallest index of each component, so ranking the roots (k_rank) numbers the
//     components by first appearance.
//   count: the same tiles; per-radius counts go to shared then global unsigned 64-bit atomics.
//   assign: one block per 64 points, centers streamed through shared memory; 4 threads per
//     point scan interleaved center slices and the block combines (smallest d2, lowest index).
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "pairs/pairs.h"
#include "pairs/pairs_common.h"

namespace gf::pairs::GF_KERNEL_NS {

constexpr int kTile = 64;
constexpr int kThreads = 256;
constexpr int kSlice = 16;
constexpr int kLd = kTile + 1;
constexpr int kRankThreads = 1024;
constexpr long long kMaxGrid = 1 << 30;

struct Header {
  long long max_bits;  // bit pattern of the largest centred squared norm (a non-negative double)
  long long pad;
};

__device__ __forceinline__ long long double_bits(double v) {
#ifdef __CUDACC__
  return __double_as_longlong(v);
#else
  long long b;
  std::memcpy(&b, &v, sizeof b);
  return b;
#endif
}
__device__ __forceinline__ double bits_double(long long b) {
#ifdef __CUDACC__
  return __longlong_as_double(b);
#else
  double v;
  std::memcpy(&v, &b, sizeof v);
  return v;
#endif
}
__device__ __forceinline__ int float_bits(float v) {
#ifdef __CUDACC__
  return __float_as_int(v);
#else
  int b;
  std::memcpy(&b, &v, sizeof b);
  return b;
#endif
}
__device__ __forceinline__ float bits_float(int b) {
#ifdef __CUDACC__
  return __int_as_float(b);
#else
  float v;
  std::memcpy(&v, &b, sizeof v);
  return v;
#endif
}
__device__ __forceinline__ int load_relaxed(const int* p) {
#ifdef __CUDACC__
  return *reinterpret_cast<const volatile int*>(p);
#else
  return std::atomic_ref<int>(*const_cast<int*>(p)).load(std::memory_order_relaxed);
#endif
}
__device__ __forceinline__ double scale_of(const Header* h) { return scale_for(bits_double(h->max_bits)); }

// ---------------------------------------------------------------------------------------------
// Workspace layout (shared by the size query and the launches).

inline int64_t align_up(int64_t n) { return (n + 255) / 256 * 256; }

struct Layout {
  int64_t header = 0, mean = 0, xs = 0, norm = 0, gx = 0, parent = 0, cs = 0, cnorm = 0, cgx = 0;
  int64_t total = 0;
};

inline Layout layout(int64_t N, int64_t D, int64_t C, bool with_parent) {
  Layout l;
  int64_t at = 0;
  auto take = [&](int64_t bytes) {
    const int64_t here = at;
    at += align_up(bytes);
    return here;
  };
  l.header = take(sizeof(Header));
  l.mean = take(D * int64_t(sizeof(double)));
  l.xs = take(N * D * int64_t(sizeof(float)));
  l.norm = take(N * int64_t(sizeof(float)));
  l.gx = take(N * int64_t(sizeof(float)));
  l.parent = take(with_parent ? N * int64_t(sizeof(int)) : 0);
  l.cs = take(C * D * int64_t(sizeof(float)));
  l.cnorm = take(C * int64_t(sizeof(float)));
  l.cgx = take(C * int64_t(sizeof(float)));
  l.total = at;
  return l;
}

// ---------------------------------------------------------------------------------------------
// Preparation.

struct PrepArgs {
  const float* x;
  int64_t sn, sd;
  int n, D;
  double inv_n;
  double* mean;
  Header* hdr;
  float* xs;
  float* norm;
  float* gx;
  float c;
  int zero_count;  // k_zero: doubles of mean to clear
};

__global__ void k_zero(PrepArgs a) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < a.zero_count) a.mean[i] = 0.0;
  if (i == 0) {
    a.hdr->max_bits = 0;
    a.hdr->pad = 0;
  }
}

constexpr int kMeanRows = 256;

__global__ void k_mean(PrepArgs a) {
  const int r0 = blockIdx.x * kMeanRows;
  const int r1 = r0 + kMeanRows < a.n ? r0 + kMeanRows : a.n;
  for (int k = threadIdx.x; k < a.D; k += blockDim.x) {
    double s = 0.0;
    for (int r = r0; r < r1; ++r) s += double(a.x[int64_t(r) * a.sn + int64_t(k) * a.sd]);
    atomicAdd(a.mean + k, s * a.inv_n);
  }
}

__global__ void k_max_norm(PrepArgs a) {
  GF_DYNAMIC_SHARED(double, red);
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  double s = 0.0;
  if (i < a.n) {
    const float* r = a.x + int64_t(i) * a.sn;
    for (int k = 0; k < a.D; ++k) {
      const double v = double(r[int64_t(k) * a.sd]) - a.mean[k];
      s += v * v;
    }
  }
  red[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if (int(threadIdx.x) < w && red[threadIdx.x + w] > red[threadIdx.x])
      red[threadIdx.x] = red[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) atomicMax(&a.hdr->max_bits, double_bits(red[0]));
}

__global__ void k_pack(PrepArgs a) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= a.n) return;
  const double scale = scale_of(a.hdr);
  const float* r = a.x + int64_t(i) * a.sn;
  float* o = a.xs + int64_t(i) * a.D;
  double s = 0.0;
  for (int k = 0; k < a.D; ++k) {
    const float v = float((double(r[int64_t(k) * a.sd]) - a.mean[k]) * scale);
    o[k] = v;
    s += double(v) * double(v);
  }
  const float n = float(s);
  a.norm[i] = n;
  a.gx[i] = a.c < INFINITY ? a.c * n + 0.5f * kGuardAbs : INFINITY;
}

inline unsigned blocks_for(int64_t n, int per) { return unsigned((n + per - 1) / per); }

// Mean of `mean_of`, largest centred norm over both sets, then the scaled copies.
inline void prepare(const Points& mean_of, const Points* other, unsigned char* ws, const Layout& l,
                    void* stream) {
  const int D = int(mean_of.d);
  PrepArgs a{};
  a.D = D;
  a.mean = reinterpret_cast<double*>(ws + l.mean);
  a.hdr = reinterpret_cast<Header*>(ws + l.header);
  a.c = guard_coefficient(D);
  a.zero_count = D;
  GF_LAUNCH(k_zero, dim3(blocks_for(D + 1, kThreads)), dim3(kThreads), 0, stream, a);
  auto set = [&](const Points& p, int64_t xs, int64_t norm, int64_t gx) {
    a.x = reinterpret_cast<const float*>(p.data);
    a.sn = p.stride_n;
    a.sd = p.stride_d;
    a.n = int(p.n);
    a.inv_n = p.n > 0 ? 1.0 / double(p.n) : 0.0;
    a.xs = reinterpret_cast<float*>(ws + xs);
    a.norm = reinterpret_cast<float*>(ws + norm);
    a.gx = reinterpret_cast<float*>(ws + gx);
  };
  set(mean_of, l.xs, l.norm, l.gx);
  if (a.n > 0) GF_LAUNCH(k_mean, dim3(blocks_for(a.n, kMeanRows)), dim3(128), 0, stream, a);
  const size_t red = kThreads * sizeof(double);
  if (a.n > 0) GF_LAUNCH(k_max_norm, dim3(blocks_for(a.n, kThreads)), dim3(kThreads), red, stream, a);
  if (other && other->n > 0) {
    set(*other, l.cs, l.cnorm, l.cgx);
    GF_LAUNCH(k_max_norm, dim3(blocks_for(a.n, kThreads)), dim3(kThreads), red, stream, a);
    GF_LAUNCH(k_pack, dim3(blocks_for(a.n, kThreads)), dim3(kThreads), 0, stream, a);
  }
  set(mean_of, l.xs, l.norm, l.gx);
  if (a.n > 0) GF_LAUNCH(k_pack, dim3(blocks_for(a.n, kThreads)), dim3(kThreads), 0, stream, a);
}

// ---------------------------------------------------------------------------------------------
// Tiles.

struct TileArgs {
  const float* xs;
  const float* norm;
  const float* gx;
  const float* x;  // original points, for the float64 recomputation
  int64_t sn, sd;
  int N, D;
  long long pair0;  // first tile pair of this launch
  const Header* hdr;
  unsigned long long* stats;
  // components
  double eps;
  int* parent;
  // count
  int R;
  const double* radii;
  const long long* groups;
  long long gstride;
  unsigned long long* counts;
  unsigned long long* counts_same;
  // count within classes (C > 0): see CountParams
  int C;
  const long long* class_offsets;
  const long long* tile_offsets;
  long long total_tiles;
  const unsigned char* mask;
  unsigned long long* neighbors;
};

// Tile pair for a linear index: item = bj (bj + 1) / 2 + bi, bi <= bj.
__device__ __forceinline__ void tile_pair(long long item, int& bi, int& bj) {
  long long j = (long long)((sqrt(8.0 * double(item) + 1.0) - 1.0) / 2.0);
  while (j * (j + 1) / 2 > item) --j;
  while ((j + 1) * (j + 2) / 2 <= item) ++j;
  bj = int(j);
  bi = int(item - j * (j + 1) / 2);
}

// acc[a][b] = <xs[i0 + ty + 16a], xs[j0 + tx + 16b]> (zero outside [0, N)).
__device__ __forceinline__ void tile_dots(const float* xs, int N, int D, int i0, int j0, float* As,
                                          float* Bs, float (&acc)[4][4]) {
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
#pragma unroll
  for (int q = 0; q < 4; ++q)
#pragma unroll
    for (int w = 0; w < 4; ++w) acc[q][w] = 0.f;
  for (int k0 = 0; k0 < D; k0 += kSlice) {
    for (int e = tid; e < kTile * kSlice; e += kThreads) {
      const int r = e / kSlice, k = e % kSlice, kk = k0 + k;
      const int gi = i0 + r, gj = j0 + r;
      As[k * kLd + r] = (gi < N && kk < D) ? xs[int64_t(gi) * D + kk] : 0.f;
      Bs[k * kLd + r] = (gj < N && kk < D) ? xs[int64_t(gj) * D + kk] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kSlice; ++k) {
      float av[4], bv[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        av[q] = As[k * kLd + ty + 16 * q];
        bv[q] = Bs[k * kLd + tx + 16 * q];
      }
#pragma unroll
      for (int q = 0; q < 4; ++q)
#pragma unroll
        for (int w = 0; w < 4; ++w) acc[q][w] += av[q] * bv[w];
    }
    __syncthreads();
  }
}

__device__ __forceinline__ int uf_find(int* parent, int x) {
  for (;;) {
    const int p = load_relaxed(parent + x);
    if (p == x) return x;
    const int gp = load_relaxed(parent + p);
    if (gp == p) return p;
    atomicCAS(parent + x, p, gp);  // path halving; a non-root's parent only moves up
    x = gp;
  }
}

__device__ __forceinline__ void uf_unite(int* parent, int a, int b) {
  for (;;) {
    a = uf_find(parent, a);
    b = uf_find(parent, b);
    if (a == b) return;
    if (a < b) {
      const int t = a;
      a = b;
      b = t;
    }
    if (atomicCAS(parent + a, a, b) == a) return;
  }
}

__global__ void __launch_bounds__(kThreads) k_components(TileArgs a) {
  GF_DYNAMIC_SHARED(float, smem);
  float* As = smem;
  float* Bs = As + kSlice * kLd;
  int* roots = reinterpret_cast<int*>(Bs + kSlice * kLd);
  int* flag = roots + 2 * kTile;
  int* exact_count = flag + 1;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  int bi, bj;
  tile_pair(a.pair0 + (long long)blockIdx.x, bi, bj);
  const int i0 = bi * kTile, j0 = bj * kTile;

  if (tid < 2 * kTile) {
    const int idx = tid < kTile ? i0 + tid : j0 + tid - kTile;
    roots[tid] = idx < a.N ? uf_find(a.parent, idx) : -1;
  }
  if (tid == 0) {
    *flag = 1;
    *exact_count = 0;
  }
  __syncthreads();
  if (tid < 2 * kTile && roots[tid] >= 0 && roots[tid] != roots[0]) *flag = 0;
  __syncthreads();
  if (*flag) {
    if (tid == 0 && a.stats) atomicAdd(a.stats + kStatTilesSkipped, 1ull);
    return;
  }

  float acc[4][4];
  tile_dots(a.xs, a.N, a.D, i0, j0, As, Bs, acc);

  const float e = scaled_radius(a.eps, scale_of(a.hdr));
  const float lo = threshold_lo(e), hi = threshold_hi(e);
  const double eps2 = a.eps * a.eps;
  int exact = 0;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int il = ty + 16 * q, i = i0 + il;
    if (i >= a.N) continue;
    const float ni = a.norm[i], gi = a.gx[i];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int jl = tx + 16 * w, j = j0 + jl;
      if (j >= a.N || j <= i) continue;
      const float t = (ni + a.norm[j]) - 2.f * acc[q][w];
      const float g = gi + a.gx[j];
      if (t - g > hi) continue;
      if (roots[il] == roots[kTile + jl]) continue;  // joined before this tile
      bool in = t + g < lo;
      if (!in) {
        ++exact;
        in = exact_d2(a.x, a.sn, a.sd, i, a.x, a.sn, a.sd, j, a.D) <= eps2;
      }
      if (in) uf_unite(a.parent, i, j);
    }
  }
  if (exact) atomicAdd(exact_count, exact);
  __syncthreads();
  if (tid == 0 && a.stats) {
    atomicAdd(a.stats + kStatTiles, 1ull);
    if (*exact_count) atomicAdd(a.stats + kStatExact, (unsigned long long)(*exact_count));
  }
}

__global__ void __launch_bounds__(kThreads) k_count(TileArgs a) {
  GF_DYNAMIC_SHARED(unsigned long long, smem);
  const int R = a.R;
  unsigned long long* cnt = smem;                            // [R][2]: all, same group
  double* e2 = reinterpret_cast<double*>(cnt + 2 * R);       // [R]
  float* lo = reinterpret_cast<float*>(e2 + R);              // [R]
  float* hi = lo + R;                                        // [R]
  float* As = hi + R;
  float* Bs = As + kSlice * kLd;
  int* misc = reinterpret_cast<int*>(Bs + kSlice * kLd);     // [0]: bits of max hi, [1]: exact
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  int bi, bj, start = 0, end = a.N;
  long long item = a.pair0 + (long long)blockIdx.x;
  if (a.C > 0) {  // the class owning this tile pair: last c with tile_offsets[c] <= item
    int lo_c = 0, hi_c = a.C - 1;
    while (lo_c < hi_c) {
      const int mid = (lo_c + hi_c + 1) / 2;
      if (a.tile_offsets[mid] <= item) lo_c = mid; else hi_c = mid - 1;
    }
    item -= a.tile_offsets[lo_c];
    start = int(a.class_offsets[lo_c]);
    end = int(a.class_offsets[lo_c + 1]);
  }
  tile_pair(item, bi, bj);
  const int i0 = start + bi * kTile, j0 = start + bj * kTile;

  if (tid == 0) {
    misc[0] = 0;
    misc[1] = 0;
  }
  __syncthreads();
  const double scale = scale_of(a.hdr);
  for (int k = tid; k < R; k += kThreads) {
    const float e = scaled_radius(a.radii[k], scale);
    lo[k] = threshold_lo(e);
    hi[k] = threshold_hi(e);
    e2[k] = a.radii[k] * a.radii[k];
    cnt[2 * k] = cnt[2 * k + 1] = 0;
    atomicMax(misc, float_bits(hi[k]));  // non-negative floats order like their bits
  }
  __syncthreads();
  float acc[4][4];
  tile_dots(a.xs, end, a.D, i0, j0, As, Bs, acc);
  const float hi_max = bits_float(misc[0]);

  float tp[4][4], tm[4][4];
  bool same[4][4], keep[4][4];
  unsigned live = 0;  // bit 4q + w: pair (q, w) is valid and may be within the largest radius
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int i = i0 + ty + 16 * q;
    const float ni = i < end ? a.norm[i] : 0.f, gi = i < end ? a.gx[i] : 0.f;
    const long long li = (a.groups && i < end) ? a.groups[i * a.gstride] : 0;
    const bool mi = !a.mask || (i < end && a.mask[i]);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int j = j0 + tx + 16 * w;
      tp[q][w] = tm[q][w] = 0.f;
      same[q][w] = false;
      keep[q][w] = false;
      if (i >= end || j >= end || j <= i) continue;
      keep[q][w] = mi && (!a.mask || a.mask[j]);
      const float t = (ni + a.norm[j]) - 2.f * acc[q][w];
      const float g = gi + a.gx[j];
      tp[q][w] = t + g;
      tm[q][w] = t - g;
      if (tm[q][w] > hi_max) continue;
      live |= 1u << (4 * q + w);
      same[q][w] = a.groups && a.groups[j * a.gstride] == li;
    }
  }
  if (live) {
    double d2[16];
    unsigned have = 0;
    int exact = 0;
    for (int k = 0; k < R; ++k) {
      unsigned long long all = 0, sg = 0;
#pragma unroll
      for (int q = 0; q < 4; ++q)
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          const int b = 4 * q + w;
          if (!(live >> b & 1)) continue;
          bool in = tp[q][w] < lo[k];
          if (!in && !(tm[q][w] > hi[k])) {
            if (!(have >> b & 1)) {
              const int i = i0 + ty + 16 * q, j = j0 + tx + 16 * w;
              d2[b] = exact_d2(a.x, a.sn, a.sd, i, a.x, a.sn, a.sd, j, a.D);
              have |= 1u << b;
              ++exact;
            }
            in = d2[b] <= e2[k];
          }
          if (in) {
            if (keep[q][w]) {
              ++all;
              sg += same[q][w] ? 1 : 0;
            }
            if (a.neighbors) {  // per-point counts: rare (predicted accuracy), global atomics
              const int i = i0 + ty + 16 * q, j = j0 + tx + 16 * w;
              if (!a.mask || a.mask[j]) atomicAdd(a.neighbors + int64_t(i) * R + k, 1ull);
              if (!a.mask || a.mask[i]) atomicAdd(a.neighbors + int64_t(j) * R + k, 1ull);
            }
          }
        }
      if (all) atomicAdd(cnt + 2 * k, all);
      if (sg) atomicAdd(cnt + 2 * k + 1, sg);
    }
    if (exact) atomicAdd(misc + 1, exact);
  }
  __syncthreads();
  for (int k = tid; k < R; k += kThreads) {
    if (cnt[2 * k]) atomicAdd(a.counts + k, cnt[2 * k]);
    if (a.counts_same && cnt[2 * k + 1]) atomicAdd(a.counts_same + k, cnt[2 * k + 1]);
  }
  if (tid == 0 && a.stats) {
    atomicAdd(a.stats + kStatTiles, 1ull);
    if (misc[1]) atomicAdd(a.stats + kStatExact, (unsigned long long)misc[1]);
  }
}

inline size_t components_smem() { return (2 * kSlice * kLd) * sizeof(float) + (2 * kTile + 2) * sizeof(int); }
inline size_t count_smem(int R) {
  return size_t(R) * (2 * sizeof(unsigned long long) + sizeof(double) + 2 * sizeof(float)) +
         (2 * kSlice * kLd) * sizeof(float) + 2 * sizeof(int);
}

template <class Kernel>
void launch_tiles(Kernel kernel, TileArgs a, size_t smem, void* stream) {
  const long long nb = (a.N + kTile - 1) / kTile;
  const long long pairs = a.C > 0 ? a.total_tiles : nb * (nb + 1) / 2;
  GF_ALLOW_SMEM(kernel, smem);
  for (long long p0 = 0; p0 < pairs; p0 += kMaxGrid) {
    a.pair0 = p0;
    const long long n = pairs - p0 < kMaxGrid ? pairs - p0 : kMaxGrid;
    GF_LAUNCH(kernel, dim3(unsigned(n)), dim3(kThreads), smem, stream, a);
  }
}

// ---------------------------------------------------------------------------------------------
// Labels: roots, their ranks (= labels by first appearance), then every point's label.

struct LabelArgs {
  int N;
  int* parent;
  long long* labels;
};

__global__ void k_init_parent(LabelArgs a) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < a.N) a.parent[i] = i;
}

__global__ void k_find_all(LabelArgs a) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < a.N) a.labels[i] = uf_find(a.parent, i);
}

// One block: thread t ranks the roots in its contiguous share; parent[root] = rank.
__global__ void k_rank(LabelArgs a) {
  GF_DYNAMIC_SHARED(long long, prefix);
  const int t = threadIdx.x, nt = blockDim.x;
  const long long share = (a.N + nt - 1) / nt;
  const long long begin = share * t, end = begin + share < a.N ? begin + share : a.N;
  long long n = 0;
  for (long long i = begin; i < end; ++i) n += a.labels[i] == i;
  prefix[t] = n;
  __syncthreads();
  if (t == 0) {
    long long run = 0;
    for (int k = 0; k < nt; ++k) {
      const long long c = prefix[k];
      prefix[k] = run;
      run += c;
    }
  }
  __syncthreads();
  long long r = prefix[t];
  for (long long i = begin; i < end; ++i)
    if (a.labels[i] == i) a.parent[i] = int(r++);
}

__global__ void k_relabel(LabelArgs a) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < a.N) a.labels[i] = a.parent[a.labels[i]];
}

// ---------------------------------------------------------------------------------------------
// assign

struct AssignArgs {
  const float* xs;
  const float* norm;
  const float* gx;
  const float* cs;
  const float* cnorm;
  const float* cgx;
  const float* x;
  int64_t sn, sd;
  const float* c;
  int64_t csn, csd;
  int N, C, D;
  double eps;
  const Header* hdr;
  long long* index;
  float* distance;
  unsigned long long* stats;
};

constexpr int kAssignGroups = kThreads / kTile;  // threads per point
constexpr int kAssignCols = kTile / kAssignGroups;

__global__ void __launch_bounds__(kThreads) k_assign(AssignArgs a) {
  GF_DYNAMIC_SHARED(double, smem);
  double* best_d2 = smem;                                      // [kThreads]
  int* best_j = reinterpret_cast<int*>(best_d2 + kThreads);    // [kThreads]
  int* exact_count = best_j + kThreads;                        // [1]
  float* As = reinterpret_cast<float*>(exact_count + 1);
  float* Cs = As + kSlice * kLd;
  const int tid = threadIdx.x, r = tid % kTile, cg = tid / kTile;
  const int i0 = blockIdx.x * kTile, i = i0 + r;
  const double scale = scale_of(a.hdr);
  const float hi = threshold_hi(scaled_radius(a.eps, scale));
  const double eps2 = a.eps * a.eps;
  const float ni = i < a.N ? a.norm[i] : 0.f, gi = i < a.N ? a.gx[i] : 0.f;
  double best = INFINITY;
  int arg = -1;
  float bound = hi;
  int exact = 0;
  if (tid == 0) *exact_count = 0;
  __syncthreads();
  for (int c0 = 0; c0 < a.C; c0 += kTile) {
    float acc[kAssignCols];
#pragma unroll
    for (int c = 0; c < kAssignCols; ++c) acc[c] = 0.f;
    for (int k0 = 0; k0 < a.D; k0 += kSlice) {
      for (int e = tid; e < kTile * kSlice; e += kThreads) {
        const int rr = e / kSlice, k = e % kSlice, kk = k0 + k;
        As[k * kLd + rr] = (i0 + rr < a.N && kk < a.D) ? a.xs[int64_t(i0 + rr) * a.D + kk] : 0.f;
        Cs[k * kLd + rr] = (c0 + rr < a.C && kk < a.D) ? a.cs[int64_t(c0 + rr) * a.D + kk] : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int k = 0; k < kSlice; ++k) {
        const float av = As[k * kLd + r];
#pragma unroll
        for (int c = 0; c < kAssignCols; ++c) acc[c] += av * Cs[k * kLd + cg * kAssignCols + c];
      }
      __syncthreads();
    }
    if (i < a.N) {
      for (int c = 0; c < kAssignCols; ++c) {  // ascending center index within this thread
        const int j = c0 + cg * kAssignCols + c;
        if (j >= a.C) break;
        const float t = (ni + a.cnorm[j]) - 2.f * acc[c];
        const float lower = t - (gi + a.cgx[j]);
        if (lower > bound) continue;
        ++exact;
        const double d2 = exact_d2(a.x, a.sn, a.sd, i, a.c, a.csn, a.csd, j, a.D);
        if (d2 <= eps2 && d2 < best) {
          best = d2;
          arg = j;
          const float cb = candidate_bound(d2, scale);
          bound = cb < hi ? cb : hi;
        }
      }
    }
  }
  best_d2[tid] = best;
  best_j[tid] = arg;
  if (exact) atomicAdd(exact_count, exact);
  __syncthreads();
  if (cg == 0 && i < a.N) {
    for (int g = 1; g < kAssignGroups; ++g) {
      const double d = best_d2[g * kTile + r];
      const int j = best_j[g * kTile + r];
      if (j >= 0 && (arg < 0 || d < best || (d == best && j < arg))) {
        best = d;
        arg = j;
      }
    }
    a.index[i] = arg;
    a.distance[i] = arg >= 0 ? float(sqrt(best)) : INFINITY;
  }
  if (tid == 0 && a.stats && *exact_count) atomicAdd(a.stats + kStatExact, (unsigned long long)(*exact_count));
}

inline size_t assign_smem() {
  return kThreads * (sizeof(double) + sizeof(int)) + sizeof(int) + 2 * kSlice * kLd * sizeof(float);
}

// ---------------------------------------------------------------------------------------------
// Entry points.

inline void check_points(const Points& x, const char* what) {
  if (x.n > kMaxPointsGpu)
    throw std::invalid_argument(std::string(what) + ": at most 2^31 - 1 points on GPU backends");
  if (x.d > (int64_t(1) << 30)) throw std::invalid_argument(std::string(what) + ": dimension too large");
}

inline void check_workspace(int64_t have, int64_t need) {
  if (have < need)
    throw std::invalid_argument("pairs: workspace of " + std::to_string(have) + " bytes, need " +
                                std::to_string(need));
}

inline int64_t components_workspace(const ComponentsParams& p) {
  return layout(p.x.n, p.x.d, 0, true).total;
}
inline int64_t assign_workspace(const AssignParams& p) {
  return layout(p.x.n, p.x.d, p.centers.n, false).total;
}
inline int64_t count_workspace(const CountParams& p) { return layout(p.x.n, p.x.d, 0, false).total; }

inline void components(const ComponentsParams& p) {
  check_points(p.x, "x");
  const int64_t N = p.x.n;
  if (N == 0) return;
  const Layout l = layout(N, p.x.d, 0, true);
  check_workspace(p.workspace_bytes, l.total);
  unsigned char* ws = reinterpret_cast<unsigned char*>(p.workspace);
  void* stream = reinterpret_cast<void*>(p.stream);
  prepare(p.x, nullptr, ws, l, stream);
  LabelArgs la{int(N), reinterpret_cast<int*>(ws + l.parent), reinterpret_cast<long long*>(p.labels)};
  GF_LAUNCH(k_init_parent, dim3(blocks_for(N, kThreads)), dim3(kThreads), 0, stream, la);
  TileArgs a{};
  a.xs = reinterpret_cast<const float*>(ws + l.xs);
  a.norm = reinterpret_cast<const float*>(ws + l.norm);
  a.gx = reinterpret_cast<const float*>(ws + l.gx);
  a.x = reinterpret_cast<const float*>(p.x.data);
  a.sn = p.x.stride_n;
  a.sd = p.x.stride_d;
  a.N = int(N);
  a.D = int(p.x.d);
  a.hdr = reinterpret_cast<const Header*>(ws + l.header);
  a.stats = reinterpret_cast<unsigned long long*>(p.stats);
  a.eps = p.eps;
  a.parent = la.parent;
  launch_tiles(k_components, a, components_smem(), stream);
  GF_LAUNCH(k_find_all, dim3(blocks_for(N, kThreads)), dim3(kThreads), 0, stream, la);
  GF_LAUNCH(k_rank, dim3(1), dim3(kRankThreads), kRankThreads * sizeof(long long), stream, la);
  GF_LAUNCH(k_relabel, dim3(blocks_for(N, kThreads)), dim3(kThreads), 0, stream, la);
}

struct FillArgs {
  long long* index;
  float* distance;
  unsigned long long* counts;
  unsigned long long* counts_same;
  int n;
};

__global__ void k_fill(FillArgs a) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= a.n) return;
  if (a.index) a.index[i] = -1;
  if (a.distance) a.distance[i] = INFINITY;
  if (a.counts) a.counts[i] = 0;
  if (a.counts_same) a.counts_same[i] = 0;
}

inline void assign(const AssignParams& p) {
  check_points(p.x, "x");
  check_points(p.centers, "centers");
  const int64_t N = p.x.n, C = p.centers.n;
  if (N == 0) return;
  void* stream = reinterpret_cast<void*>(p.stream);
  if (C == 0) {
    FillArgs f{reinterpret_cast<long long*>(p.index), reinterpret_cast<float*>(p.distance), nullptr,
               nullptr, int(N)};
    GF_LAUNCH(k_fill, dim3(blocks_for(N, kThreads)), dim3(kThreads), 0, stream, f);
    return;
  }
  const Layout l = layout(N, p.x.d, C, false);
  check_workspace(p.workspace_bytes, l.total);
  unsigned char* ws = reinterpret_cast<unsigned char*>(p.workspace);
  prepare(p.x, &p.centers, ws, l, stream);
  AssignArgs a{};
  a.xs = reinterpret_cast<const float*>(ws + l.xs);
  a.norm = reinterpret_cast<const float*>(ws + l.norm);
  a.gx = reinterpret_cast<const float*>(ws + l.gx);
  a.cs = reinterpret_cast<const float*>(ws + l.cs);
  a.cnorm = reinterpret_cast<const float*>(ws + l.cnorm);
  a.cgx = reinterpret_cast<const float*>(ws + l.cgx);
  a.x = reinterpret_cast<const float*>(p.x.data);
  a.sn = p.x.stride_n;
  a.sd = p.x.stride_d;
  a.c = reinterpret_cast<const float*>(p.centers.data);
  a.csn = p.centers.stride_n;
  a.csd = p.centers.stride_d;
  a.N = int(N);
  a.C = int(C);
  a.D = int(p.x.d);
  a.eps = p.eps;
  a.hdr = reinterpret_cast<const Header*>(ws + l.header);
  a.index = reinterpret_cast<long long*>(p.index);
  a.distance = reinterpret_cast<float*>(p.distance);
  a.stats = reinterpret_cast<unsigned long long*>(p.stats);
  GF_ALLOW_SMEM(k_assign, assign_smem());
  GF_LAUNCH(k_assign, dim3(blocks_for(N, kTile)), dim3(kThreads), assign_smem(), stream, a);
}

inline void count(const CountParams& p) {
  check_points(p.x, "x");
  if (p.R > kMaxRadiiGpu)
    throw std::invalid_argument("count_pairs: at most " + std::to_string(kMaxRadiiGpu) +
                                " radii on GPU backends, got " + std::to_string(p.R));
  const int64_t N = p.x.n, R = p.R;
  void* stream = reinterpret_cast<void*>(p.stream);
  unsigned long long* counts = reinterpret_cast<unsigned long long*>(p.counts);
  unsigned long long* counts_same = p.groups ? reinterpret_cast<unsigned long long*>(p.counts_same) : nullptr;
  if (R == 0) return;
  FillArgs f{nullptr, nullptr, counts, counts_same, int(R)};
  GF_LAUNCH(k_fill, dim3(blocks_for(R, kThreads)), dim3(kThreads), 0, stream, f);
  if (N < 2) return;
  const Layout l = layout(N, p.x.d, 0, false);
  check_workspace(p.workspace_bytes, l.total);
  unsigned char* ws = reinterpret_cast<unsigned char*>(p.workspace);
  prepare(p.x, nullptr, ws, l, stream);
  TileArgs a{};
  a.xs = reinterpret_cast<const float*>(ws + l.xs);
  a.norm = reinterpret_cast<const float*>(ws + l.norm);
  a.gx = reinterpret_cast<const float*>(ws + l.gx);
  a.x = reinterpret_cast<const float*>(p.x.data);
  a.sn = p.x.stride_n;
  a.sd = p.x.stride_d;
  a.N = int(N);
  a.D = int(p.x.d);
  a.hdr = reinterpret_cast<const Header*>(ws + l.header);
  a.stats = reinterpret_cast<unsigned long long*>(p.stats);
  a.R = int(R);
  a.radii = reinterpret_cast<const double*>(p.radii);
  a.groups = p.C > 0 ? nullptr : reinterpret_cast<const long long*>(p.groups);
  a.gstride = p.groups_stride;
  a.counts = counts;
  a.counts_same = p.C > 0 ? nullptr : counts_same;
  a.C = int(p.C);
  a.class_offsets = reinterpret_cast<const long long*>(p.class_offsets);
  a.tile_offsets = reinterpret_cast<const long long*>(p.tile_offsets);
  a.total_tiles = p.total_tiles;
  a.mask = reinterpret_cast<const unsigned char*>(p.mask);
  a.neighbors = reinterpret_cast<unsigned long long*>(p.neighbors);
  if (p.C > 0 && p.total_tiles == 0) return;
  launch_tiles(k_count, a, count_smem(int(R)), stream);
}

}  // namespace gf::pairs::GF_KERNEL_NS
