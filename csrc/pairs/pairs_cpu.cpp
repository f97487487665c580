// CPU backend of the pair kernels. Distances come from register-blocked float32 dot-product
// tiles of 64 x 64 points (register blocks of 6 rows x 4 vectors of columns on 32 registers,
// 6 x 2 on 16, like the RNN GEMM) on centred, scaled copies of the points, with the guard band of
// pairs_common.h deciding which pairs are recomputed in float64.
//
// components: a leader pass first covers each chunk of points greedily (a point within eps of an
// existing leader joins its group; the edge to the leader is real, so a group is connected) and
// records for every group an upper bound rho on its members' distance to the leader. Groups are
// then compared tile by tile through their leaders: |l_A - l_B| > eps + rho_A + rho_B rules out
// every member pair, |l_A - l_B| + rho_A + rho_B <= eps joins the groups, and only the pairs in
// between look at members (and stop at the first edge). A tile whose groups already share one
// root is skipped before any distance is computed. The union-find is lock-free (CAS, higher root
// linked under the lower one, path halving), so tiles run in parallel. Points that fit no
// clustered structure stay singleton groups, and the tiles then are a plain exact all-pairs pass.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

#include <sys/mman.h>

#include "parallel.h"
#include "pairs/pairs.h"
#include "pairs/pairs_common.h"
#include "simd.h"

namespace gf::pairs::GF_CPU_VARIANT {
namespace {

constexpr int W = simd::lanes<float>;  // float32 lanes per vector
constexpr int kTile = 64;   // points (or groups) per tile side
constexpr int kTilePanels = kTile / W;  // vectors of columns per tile side
constexpr int kMaxLeaders = 512;   // per chunk
using vf = simd::vec<float>;
using vi = simd::vec<int32_t>;
using simd::splat;

inline vf loadf(const float* p) { return simd::load(p); }
inline vi loadi(const int32_t* p) { return simd::load(p); }
inline vi iota_from(int64_t base) {
  vi lane;
  for (int l = 0; l < W; ++l) lane[l] = l;
  return lane + int32_t(base);
}
// Bit l set where lane l of a comparison mask is true.
inline uint32_t lanes(vi m) { return simd::mask_bits(m); }

template <class T>
struct Buffer {
  T* data = nullptr;
  int64_t size = 0;
  Buffer() = default;
  explicit Buffer(int64_t n) { reset(n); }
  // Zeroed unless the caller overwrites every element itself (zero = false).
  void reset(int64_t n, bool zero = true) {
    std::free(data);
    size = n;
    const size_t bytes = (size_t(std::max<int64_t>(n, 1)) * sizeof(T) + 63) / 64 * 64;
    // Large buffers on transparent huge pages: one fault per 2 MiB instead of per 4 KiB.
    constexpr size_t kHuge = size_t(2) << 20;
    const bool huge = bytes >= 16 * kHuge;
    data = static_cast<T*>(std::aligned_alloc(huge ? kHuge : 64, huge ? (bytes + kHuge - 1) / kHuge * kHuge : bytes));
    if (!data) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (huge) madvise(data, (bytes + kHuge - 1) / kHuge * kHuge, MADV_HUGEPAGE);
#endif
    if (zero) std::memset(data, 0, bytes);
  }
  ~Buffer() { std::free(data); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  T& operator[](int64_t i) { return data[i]; }
  const T& operator[](int64_t i) const { return data[i]; }
};

int thread_count(int requested, double work) {
  const int hw = hardware_threads();
  if (requested <= 0)
    if (const char* env = std::getenv("GROKFAST_NUM_THREADS")) requested = std::atoi(env);
  if (requested > 0) return std::min(requested, hw);
  return work < 5e6 ? 1 : hw;  // below ~1 ms one thread wins (see rnn_cpu.cpp)
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Counters {
  std::atomic<int64_t> v[kStats] = {};
  void flush(ptr_t stats) const {
    if (!stats) return;
    int64_t* s = reinterpret_cast<int64_t*>(stats);
    for (int k = 0; k < kStats; ++k) s[k] += v[k].load();
  }
};

// ---------------------------------------------------------------------------------------------
// Centred, power-of-two-scaled float32 copies with norms and half-guards (pairs_common.h).

struct Scaled {
  int64_t n = 0, d = 0;
  Buffer<float> xs;    // [n][d]
  Buffer<float> norm;  // [n]
  Buffer<float> gx;    // [n]: c_D * norm + 2^-101, so g_ij = gx_i + gx_j
};

struct Frame {
  std::vector<double> mean;
  double scale = 1.0;
  float c = 0.f;
};

inline const float* row_ptr(const Points& x, int64_t i) {
  return reinterpret_cast<const float*>(x.data) + i * x.stride_n;
}

// The centre m is the column mean; the power-of-two scale only has to bring norms to about 1,
// so it comes from a bound on |x - m| built from the per-column ranges of the same pass.
Frame make_frame(const Points& x, const Points* other, int threads) {
  const int64_t D = x.d;
  Frame f;
  f.mean.assign(D, 0.0);
  f.c = guard_coefficient(D);
  if (x.n == 0) return f;
  const int64_t chunk = 4096;
  std::vector<double> lo(D, INFINITY), hi(D, -INFINITY);
  for (const Points* pts : {&x, other}) {
    if (!pts || pts->n == 0) continue;
    const int64_t nchunks = ceil_div(pts->n, chunk);
    std::vector<double> partial(nchunks * D * 3);
    parallel_for(nchunks, threads, [&](int64_t c) {
      double* acc = partial.data() + c * D * 3;
      double* mn = acc + D;
      double* mx = acc + 2 * D;
      for (int64_t k = 0; k < D; ++k) {
        acc[k] = 0.0;
        mn[k] = INFINITY;
        mx[k] = -INFINITY;
      }
      for (int64_t i = c * chunk; i < std::min(pts->n, (c + 1) * chunk); ++i) {
        const float* r = row_ptr(*pts, i);
        if (pts->stride_d == 1) {
          for (int64_t k = 0; k < D; ++k) {
            acc[k] += r[k];
            mn[k] = std::min(mn[k], double(r[k]));
            mx[k] = std::max(mx[k], double(r[k]));
          }
        } else {
          for (int64_t k = 0; k < D; ++k) {
            const double v = r[k * pts->stride_d];
            acc[k] += v;
            mn[k] = std::min(mn[k], v);
            mx[k] = std::max(mx[k], v);
          }
        }
      }
    });
    for (int64_t c = 0; c < nchunks; ++c) {
      const double* acc = partial.data() + c * D * 3;
      for (int64_t k = 0; k < D; ++k) {
        if (pts == &x) f.mean[k] += acc[k];
        lo[k] = std::min(lo[k], acc[D + k]);
        hi[k] = std::max(hi[k], acc[2 * D + k]);
      }
    }
  }
  for (int64_t k = 0; k < D; ++k) f.mean[k] /= double(x.n);
  double bound2 = 0.0;  // >= max |x - m|^2
  for (int64_t k = 0; k < D; ++k) {
    const double a = std::max(hi[k] - f.mean[k], f.mean[k] - lo[k]);
    bound2 += a * a;
  }
  f.scale = scale_for(bound2);
  return f;
}

void scale_points(const Points& x, const Frame& f, Scaled& out, int threads) {
  const int64_t N = x.n, D = x.d;
  out.n = N;
  out.d = D;
  out.xs.reset(N * D, false);
  out.norm.reset(N, false);
  out.gx.reset(N, false);
  const int64_t chunk = 4096;
  const double* mean = f.mean.data();
  const double scale = f.scale;
  parallel_for(ceil_div(N, chunk), threads, [&](int64_t c) {
    for (int64_t i = c * chunk; i < std::min(N, (c + 1) * chunk); ++i) {
      const float* r = row_ptr(x, i);
      float* o = out.xs.data + i * D;
      double s = 0.0;
      if (x.stride_d == 1)
        for (int64_t k = 0; k < D; ++k) o[k] = float((double(r[k]) - mean[k]) * scale);
      else
        for (int64_t k = 0; k < D; ++k) o[k] = float((double(r[k * x.stride_d]) - mean[k]) * scale);
      for (int64_t k = 0; k < D; ++k) s += double(o[k]) * double(o[k]);
      out.norm[i] = float(s);
      out.gx[i] = std::isinf(f.c) ? INFINITY : f.c * out.norm[i] + 0.5f * kGuardAbs;
    }
  });
}

// Columns in the layout the tiles read: [ceil(n / W)][D][W], one vector per dimension.
// Padding lanes (past the end, or where index_of gives -1) get norm +inf (so t = +inf: never
// within) and guard 0.
struct Panels {
  int64_t count = 0, d = 0;
  Buffer<float> data, norm, gx;
  const float* panel(int64_t p) const { return data.data + p * d * W; }
};

template <class IndexFn>
void pack(const Scaled& s, int64_t count, IndexFn index_of, Panels& out, int threads) {
  const int64_t D = s.d, np = ceil_div(count, W);
  out.count = count;
  out.d = D;
  out.data.reset(np * D * W, false);
  out.norm.reset(np * W);
  out.gx.reset(np * W);
  for (int64_t j = count; j < np * W; ++j) out.norm[j] = INFINITY;
  if (count < np * W)  // padding lanes of the last panel
    for (int64_t k = 0; k < D; ++k)
      for (int64_t l = count % W; l < W; ++l) out.data[(np - 1) * D * W + k * W + l] = 0.f;
  parallel_for(ceil_div(np, 64), threads, [&](int64_t c) {
    for (int64_t p = c * 64; p < std::min(np, (c + 1) * 64); ++p)
      for (int64_t l = 0; l < W && p * W + l < count; ++l) {
        const int64_t j = p * W + l, src = index_of(j);
        float* dst = out.data.data + p * D * W + l;
        if (src < 0) {  // a padding lane inside the set (class blocks start on a panel)
          for (int64_t k = 0; k < D; ++k) dst[k * W] = 0.f;
          out.norm[j] = INFINITY;
          out.gx[j] = 0.f;
          continue;
        }
        const float* r = s.xs.data + src * D;
        for (int64_t k = 0; k < D; ++k) dst[k * W] = r[k];
        out.norm[j] = s.norm[src];
        out.gx[j] = s.gx[src];
      }
  });
}

// scale_points and pack in one pass, straight into the panel layout (no row-major copy):
// panel lane j holds point source[j], or padding where source[j] < 0.
void scale_into_panels(const Points& x, const Frame& f, const std::vector<int64_t>& source,
                       Panels& out, int threads) {
  const int64_t D = x.d, count = int64_t(source.size()), np = ceil_div(count, W);
  out.count = count;
  out.d = D;
  out.data.reset(np * D * W, false);
  out.norm.reset(np * W, false);
  out.gx.reset(np * W, false);
  const double* mean = f.mean.data();
  parallel_for(ceil_div(np, 64), threads, [&](int64_t c) {
    for (int64_t p = c * 64; p < std::min(np, (c + 1) * 64); ++p)
      for (int64_t l = 0; l < W; ++l) {
        const int64_t j = p * W + l, src = j < count ? source[j] : -1;
        float* dst = out.data.data + p * D * W + l;
        if (src < 0) {
          for (int64_t k = 0; k < D; ++k) dst[k * W] = 0.f;
          out.norm[j] = INFINITY;
          out.gx[j] = 0.f;
          continue;
        }
        const float* r = row_ptr(x, src);
        double sum = 0.0;
        for (int64_t k = 0; k < D; ++k) {
          const float o = float((double(r[k * x.stride_d]) - mean[k]) * f.scale);
          dst[k * W] = o;
          sum += double(o) * double(o);
        }
        out.norm[j] = float(sum);
        out.gx[j] = std::isinf(f.c) ? INFINITY : f.c * out.norm[j] + 0.5f * kGuardAbs;
      }
  });
}

// ---------------------------------------------------------------------------------------------
// Register-blocked tiles: acc[r][v] = <row r, the W columns of panel v>.

// rows[r][k * rs]: rs = 1 for row-major points, W for rows read out of panels.
template <int MR, int NV>
inline void dots(int64_t D, const float* const* rows, int64_t rs, const float* panels, vf (&acc)[MR][NV]) {
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vf{};
  const int64_t ps = D * W;
  for (int64_t k = 0; k < D; ++k) {
    vf p[NV];
    for (int v = 0; v < NV; ++v) p[v] = loadf(panels + v * ps + k * W);
    for (int r = 0; r < MR; ++r) {
      const vf s = splat(rows[r][k * rs]);
      for (int v = 0; v < NV; ++v) acc[r][v] += s * p[v];
    }
  }
}

template <int MR, int NV, class Epi>
inline void run_block(int64_t D, const float* const* rows, int64_t rs, int64_t r0, const float* panels,
                      int v0, Epi& epi) {
  vf acc[MR][NV];
  dots<MR, NV>(D, rows + r0, rs, panels + v0 * D * W, acc);
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) epi(r0 + r, v0 + v, acc[r][v]);
}

// Panels per register block of MR rows: MR * NV accumulators, NV panel vectors and a broadcast
// fit the registers (6 rows x 4 panels on 32 registers, 6 x 2 on 16).
template <int MR>
constexpr int kBlockPanels = std::min({8, kTilePanels, (simd::kRegisters - 1) / (MR + 1)});

template <int MR, class Epi>
inline void run_rows(int64_t D, const float* const* rows, int64_t rs, int64_t r0, const float* panels, int np, Epi& epi) {
  constexpr int NB = kBlockPanels<MR>;
  for (int v0 = 0; v0 < np; v0 += NB) {
    switch (std::min(NB, np - v0)) {
#define GF_CASE(nv)                                                                   \
  case nv:                                                                            \
    if constexpr (nv <= NB) run_block<MR, nv>(D, rows, rs, r0, panels, v0, epi);      \
    break;
      GF_CASE(1) GF_CASE(2) GF_CASE(3) GF_CASE(4) GF_CASE(5) GF_CASE(6) GF_CASE(7) GF_CASE(8)
#undef GF_CASE
    }
  }
}

// epi(r, v, dot) for rows [0, nrows) and panels [0, np) (np <= kTilePanels); for each row the
// panels come in ascending order.
template <class Epi>
void tile(int64_t D, const float* const* rows, int64_t nrows, const float* panels, int np, Epi&& epi,
          int64_t rs = 1) {
  int64_t r = 0;
  for (; r + 6 <= nrows; r += 6) run_rows<6>(D, rows, rs, r, panels, np, epi);
  switch (nrows - r) {
    case 5: run_rows<5>(D, rows, rs, r, panels, np, epi); break;
    case 4: run_rows<4>(D, rows, rs, r, panels, np, epi); break;
    case 3: run_rows<3>(D, rows, rs, r, panels, np, epi); break;
    case 2: run_rows<2>(D, rows, rs, r, panels, np, epi); break;
    case 1: run_rows<1>(D, rows, rs, r, panels, np, epi); break;
  }
}

// float32 dot product in any order (the guard bound allows it).
inline float dot32(const float* a, const float* b, int64_t D) {
  vf acc{};
  int64_t k = 0;
  for (; k + W <= D; k += W) acc += loadf(a + k) * loadf(b + k);
  float s = 0.f;
  for (; k < D; ++k) s += a[k] * b[k];
  for (int l = 0; l < W; ++l) s += acc[l];
  return s;
}

// Upper triangle of tile pairs (bi <= bj), enumerated column by column: item = bj(bj+1)/2 + bi.
inline void tile_pair(int64_t item, int64_t& bi, int64_t& bj) {
  int64_t j = int64_t((std::sqrt(8.0 * double(item) + 1.0) - 1.0) / 2.0);
  while (j * (j + 1) / 2 > item) --j;
  while ((j + 1) * (j + 2) / 2 <= item) ++j;
  bj = j;
  bi = item - j * (j + 1) / 2;
}

// ---------------------------------------------------------------------------------------------
// Lock-free union-find: the higher root is linked under the lower one, finds halve paths.

struct UnionFind {
  int64_t* parent;
  static int64_t load(int64_t& v) { return std::atomic_ref<int64_t>(v).load(std::memory_order_relaxed); }
  int64_t find(int64_t x) const {
    for (;;) {
      const int64_t p = load(parent[x]);
      if (p == x) return x;
      const int64_t gp = load(parent[p]);
      if (gp == p) return p;
      int64_t expected = p;  // a non-root's parent only moves up, so any ancestor is fine
      std::atomic_ref<int64_t>(parent[x]).compare_exchange_weak(expected, gp, std::memory_order_relaxed);
      x = gp;
    }
  }
  void unite(int64_t a, int64_t b) const {
    for (;;) {
      a = find(a);
      b = find(b);
      if (a == b) return;
      if (a < b) std::swap(a, b);
      int64_t expected = a;
      if (std::atomic_ref<int64_t>(parent[a]).compare_exchange_strong(expected, b, std::memory_order_acq_rel))
        return;
    }
  }
};

// ---------------------------------------------------------------------------------------------
// components

struct Chunk {
  int64_t begin = 0, end = 0;
  std::vector<int64_t> heads;  // point index of each local group's head (leader or singleton)
  std::vector<float> bound;    // per head: max fl(t + g) to a member (0 = no members)
};

struct Decider {
  const Points* x;
  const Scaled* s;
  double eps2;
  float lo, hi;
  Counters* stats;
  // The pair decision for points p, q (pairs_common.h).
  bool within(int64_t p, int64_t q) const {
    const int64_t D = s->d;
    const float t = (s->norm[p] + s->norm[q]) - 2.f * dot32(s->xs.data + p * D, s->xs.data + q * D, D);
    const float g = s->gx[p] + s->gx[q];
    if (t + g < lo) return true;
    if (t - g > hi) return false;
    stats->v[kStatExact].fetch_add(1, std::memory_order_relaxed);
    const float* xd = reinterpret_cast<const float*>(x->data);
    return exact_d2(xd, x->stride_n, x->stride_d, p, xd, x->stride_n, x->stride_d, q, D) <= eps2;
  }
};

void leader_pass(const Scaled& s, const Decider& dec, Chunk& c, int64_t* group_local) {
  const int64_t D = s.d;
  enum class Mode { Create, CoverOnly, Off } mode = Mode::Create;
  // Leader budget: kMaxLeaders, fewer when their panels would exceed 64 MB (huge D).
  const int64_t max_leaders =
      std::clamp<int64_t>((int64_t(1) << 24) / std::max<int64_t>(D, 1) / W * W, W, kMaxLeaders);
  std::vector<float> panels;  // grows one panel of W leaders at a time, zero padded
  std::vector<float> lnorm(max_leaders, INFINITY), lgx(max_leaders, 0.f);
  std::vector<int64_t> leader_head(max_leaders);
  const float lo = dec.lo;
  int64_t L = 0, processed = 0;
  for (int64_t b0 = c.begin; b0 < c.end; b0 += kTile) {
    const int64_t rows = std::min<int64_t>(kTile, c.end - b0);
    int64_t first[kTile];
    float fbound[kTile];
    std::fill(first, first + rows, -1);
    const int64_t L_before = L;
    if (mode != Mode::Off && L > 0) {
      // Rows still uncovered; leaders come in creation order, so most rows drop out after the
      // first panels (the early leaders are the big clusters').
      const float* rowp[kTile];
      int64_t pending[kTile];
      int64_t npend = rows;
      for (int64_t r = 0; r < rows; ++r) pending[r] = r;
      for (int64_t q = 0; q < L && npend > 0; q += kTile) {
        for (int64_t k = 0; k < npend; ++k) rowp[k] = s.xs.data + (b0 + pending[k]) * D;
        const int np = int(std::min<int64_t>(kTilePanels, ceil_div(L - q, W)));
        tile(D, rowp, npend, panels.data() + q * D, np, [&](int64_t k, int v, vf dot) {
          const int64_t r = pending[k];
          if (first[r] >= 0) return;
          const int64_t i = b0 + r, base = q + v * W;
          const vf t = (splat(s.norm[i]) + loadf(lnorm.data() + base)) - dot * 2.f;
          const vf tg = t + (splat(s.gx[i]) + loadf(lgx.data() + base));
          const uint32_t m = lanes(tg < splat(lo));
          if (!m) return;
          const int lane = __builtin_ctz(m);
          first[r] = base + lane;
          fbound[r] = tg[lane];
        });
        int64_t kept = 0;
        for (int64_t k = 0; k < npend; ++k)
          if (first[pending[k]] < 0) pending[kept++] = pending[k];
        npend = kept;
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = b0 + r;
      if (first[r] < 0 && mode == Mode::Create) {
        for (int64_t l = L_before; l < L; ++l) {  // leaders made earlier in this block
          const int64_t h = c.heads[leader_head[l]];
          const float t = (s.norm[i] + s.norm[h]) - 2.f * dot32(s.xs.data + i * D, s.xs.data + h * D, D);
          const float tg = t + (s.gx[i] + s.gx[h]);
          if (tg < lo) {
            first[r] = l;
            fbound[r] = tg;
            break;
          }
        }
      }
      if (first[r] >= 0) {
        const int64_t h = leader_head[first[r]];
        group_local[i] = h;
        c.bound[h] = std::max(c.bound[h], fbound[r]);
        continue;
      }
      const int64_t h = int64_t(c.heads.size());
      c.heads.push_back(i);
      c.bound.push_back(0.f);
      group_local[i] = h;
      if (mode == Mode::Create) {
        if (L % W == 0) panels.resize(size_t(L + W) * size_t(D), 0.f);
        float* dst = panels.data() + (L / W) * D * W + (L % W);
        const float* src = s.xs.data + i * D;
        for (int64_t k = 0; k < D; ++k) dst[k * W] = src[k];
        lnorm[L] = s.norm[i];
        lgx[L] = s.gx[i];
        leader_head[L] = h;
        ++L;
        if (L == max_leaders) mode = Mode::CoverOnly;
      }
    }
    processed += rows;
    // Leaders that cover (almost) nothing only cost time: without any clustered structure,
    // stop scanning; the remaining points of the chunk stay singletons.
    if (mode == Mode::Create && processed >= 8 * kTile && 10 * L > 9 * processed) mode = Mode::Off;
  }
}

void components_impl(const ComponentsParams& p) {
  const int64_t N = p.x.n, D = p.x.d;
  int64_t* labels = reinterpret_cast<int64_t*>(p.labels);
  if (N == 0) return;
  Counters stats;
  const int threads = thread_count(p.num_threads, double(N) * double(D) * 64.0);
  const Frame frame = make_frame(p.x, nullptr, threads);
  Scaled s;
  scale_points(p.x, frame, s, threads);
  const float e = scaled_radius(p.eps, frame.scale);
  const Decider dec{&p.x, &s, p.eps * p.eps, threshold_lo(e), threshold_hi(e), &stats};

  // 1. Leader pass, chunk by chunk in parallel.
  const int64_t chunk = std::clamp<int64_t>(ceil_div(N, 4 * int64_t(threads)), 2048, 65536);
  const int64_t nchunks = ceil_div(N, chunk);
  std::vector<Chunk> chunks(nchunks);
  std::vector<int64_t> group_of(N);
  parallel_for(nchunks, threads, [&](int64_t c) {
    chunks[c].begin = c * chunk;
    chunks[c].end = std::min(N, (c + 1) * chunk);
    leader_pass(s, dec, chunks[c], group_of.data());
  });

  // 2. Groups: global ids, heads, bounding radii, members (contiguous, ascending).
  std::vector<int64_t> offset(nchunks + 1, 0);
  for (int64_t c = 0; c < nchunks; ++c) offset[c + 1] = offset[c] + int64_t(chunks[c].heads.size());
  const int64_t G = offset[nchunks];
  stats.v[kStatGroups] = G;
  std::vector<int64_t> head(G), start(G + 1, 0), members(N);
  Buffer<float> rho(ceil_div(G, W) * W);
  for (int64_t c = 0; c < nchunks; ++c)
    for (size_t h = 0; h < chunks[c].heads.size(); ++h) {
      head[offset[c] + h] = chunks[c].heads[h];
      rho[offset[c] + h] = rho_from_bound(chunks[c].bound[h]);
    }
  for (int64_t c = 0; c < nchunks; ++c)
    for (int64_t i = chunks[c].begin; i < chunks[c].end; ++i) group_of[i] += offset[c];
  for (int64_t i = 0; i < N; ++i) ++start[group_of[i] + 1];
  for (int64_t g = 0; g < G; ++g) start[g + 1] += start[g];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < N; ++i) members[fill[group_of[i]]++] = i;
  }
  Panels gp;
  pack(s, G, [&](int64_t g) { return head[g]; }, gp, threads);

  std::vector<int64_t> parent(G);
  for (int64_t g = 0; g < G; ++g) parent[g] = g;
  const UnionFind uf{parent.data()};
  const float* xd = reinterpret_cast<const float*>(p.x.data);

  // Members in group order as W-wide panels, for the member checks below.
  Panels mp;
  if (G < N) pack(s, N, [&](int64_t j) { return members[j]; }, mp, threads);
  const float lo0 = dec.lo, hi0 = dec.hi;

  // Whether some row point is within eps of some member at panel positions [pos0, pos1).
  auto any_within = [&](const int64_t* pts, int64_t npts, int64_t pos0, int64_t pos1) {
    const float* rowp[kTile];
    bool found = false;
    for (int64_t r0 = 0; r0 < npts && !found; r0 += kTile) {
      const int64_t nr = std::min<int64_t>(kTile, npts - r0);
      for (int64_t r = 0; r < nr; ++r) rowp[r] = s.xs.data + pts[r0 + r] * D;
      for (int64_t q = pos0 / W * W; q < pos1 && !found; q += kTile) {
        const int np = int(std::min<int64_t>(kTilePanels, ceil_div(pos1 - q, W)));
        tile(D, rowp, nr, mp.panel(q / W), np, [&](int64_t r, int v, vf dot) {
          if (found) return;
          const int64_t i = pts[r0 + r], jb = q + v * W;
          const vf t = (splat(s.norm[i]) + loadf(mp.norm.data + jb)) - dot * 2.f;
          const vf g = splat(s.gx[i]) + loadf(mp.gx.data + jb);
          const vi idx = iota_from(jb);
          const uint32_t m = lanes((idx >= int32_t(pos0)) & (idx < int32_t(pos1)) & ~((t - g) > hi0));
          if (!m) return;
          if (lanes((t + g) < lo0) & m) {
            found = true;
            return;
          }
          for (uint32_t bits = m; bits && !found; bits &= bits - 1) {
            stats.v[kStatExact].fetch_add(1, std::memory_order_relaxed);
            found = exact_d2(xd, p.x.stride_n, p.x.stride_d, i, xd, p.x.stride_n, p.x.stride_d,
                             members[jb + __builtin_ctz(bits)], D) <= dec.eps2;
          }
        });
      }
    }
    return found;
  };

  // Groups A and B whose leaders are neither surely apart nor surely joined: look at members.
  auto resolve = [&](int64_t A, int64_t B) {
    if (uf.find(A) == uf.find(B)) return;
    if (start[A + 1] - start[A] > start[B + 1] - start[B]) std::swap(A, B);  // rows: smaller
    if (start[B + 1] - start[B] == 1) {
      if (dec.within(head[A], head[B])) uf.unite(A, B);
      return;
    }
    // Rows: the members of A that can be within eps of a member of B, i.e. within
    // eps + rho_B of B's leader (triangle inequality); A's leader comes first.
    std::vector<int64_t> rows;
    if (start[A + 1] - start[A] == 1) {
      rows.push_back(head[A]);
    } else {
      const int64_t lb = head[B], pos0 = start[A], pos1 = start[A + 1];
      const float reach = group_hi(e, rho[B]);
      const float* rowp[1] = {s.xs.data + lb * D};
      for (int64_t q = pos0 / W * W; q < pos1; q += kTile) {
        const int np = int(std::min<int64_t>(kTilePanels, ceil_div(pos1 - q, W)));
        tile(D, rowp, 1, mp.panel(q / W), np, [&](int64_t, int v, vf dot) {
          const int64_t jb = q + v * W;
          const vf t = (splat(s.norm[lb]) + loadf(mp.norm.data + jb)) - dot * 2.f;
          const vf g = splat(s.gx[lb]) + loadf(mp.gx.data + jb);
          const vi idx = iota_from(jb);
          for (uint32_t m = lanes((idx >= int32_t(pos0)) & (idx < int32_t(pos1)) & ~((t - g) > reach)); m;
               m &= m - 1)
            rows.push_back(members[jb + __builtin_ctz(m)]);
        });
      }
    }
    if (!rows.empty() && any_within(rows.data(), int64_t(rows.size()), start[B], start[B + 1]))
      uf.unite(A, B);
  };

  // 3. Tiles of groups.
  const int64_t nb = ceil_div(G, kTile);
  const int stage_threads = thread_count(p.num_threads, double(G) * double(G) * double(D) / 2);
  parallel_for(nb * (nb + 1) / 2, stage_threads, [&](int64_t item) {
    int64_t bi, bj;
    tile_pair(item, bi, bj);
    const int64_t i0 = bi * kTile, j0 = bj * kTile;
    const int64_t ni = std::min<int64_t>(kTile, G - i0), nj = std::min<int64_t>(kTile, G - j0);
    const int64_t root = uf.find(i0);
    bool same = true;
    for (int64_t g = i0; g < i0 + ni && same; ++g) same = uf.find(g) == root;
    for (int64_t g = j0; g < j0 + nj && same; ++g) same = uf.find(g) == root;
    if (same) {
      stats.v[kStatTilesSkipped].fetch_add(1, std::memory_order_relaxed);
      return;
    }
    stats.v[kStatTiles].fetch_add(1, std::memory_order_relaxed);
    const float* rowp[kTile];
    for (int64_t r = 0; r < ni; ++r) rowp[r] = s.xs.data + head[i0 + r] * D;
    const int np = int(ceil_div(nj, W));
    tile(D, rowp, ni, gp.panel(j0 / W), np, [&](int64_t r, int v, vf dot) {
      const int64_t gi = i0 + r, jb = j0 + v * W;
      if (jb + W - 1 <= gi) return;
      const vf t = (splat(gp.norm[gi]) + loadf(gp.norm.data + jb)) - dot * 2.f;
      const vf g = splat(gp.gx[gi]) + loadf(gp.gx.data + jb);
      const vf rs = splat(rho[gi]) + loadf(rho.data + jb);
      const vf b_hi = (splat(e * kUp) + rs) * kUp;
      const vi out = (t - g) > (b_hi * b_hi) * kUp;
      const vi idx = iota_from(jb);
      uint32_t m = lanes((idx > int32_t(gi)) & (idx < int32_t(G)) & ~out);
      if (!m) return;
      vf b_lo = splat(e * kDown) - rs;
      b_lo = b_lo > 0.f ? b_lo : vf{};
      const uint32_t in = lanes((t + g) < (b_lo * b_lo) * kDown) & m;
      for (uint32_t b = in; b; b &= b - 1) uf.unite(gi, jb + __builtin_ctz(b));
      for (uint32_t b = m & ~in; b; b &= b - 1) resolve(gi, jb + __builtin_ctz(b));
    });
  });

  // 4. Labels by first appearance.
  std::vector<int64_t> root_label(G, -1);
  int64_t next = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t r = uf.find(group_of[i]);
    if (root_label[r] < 0) root_label[r] = next++;
    labels[i] = root_label[r];
  }
  stats.flush(p.stats);
}

// ---------------------------------------------------------------------------------------------
// count

void count_impl(const CountParams& p) {
  const int64_t N = p.x.n, D = p.x.d, R = p.R;
  int64_t* counts = reinterpret_cast<int64_t*>(p.counts);
  int64_t* counts_same = reinterpret_cast<int64_t*>(p.counts_same);
  const bool by_class = p.C > 0;
  const bool grouped = !by_class && p.groups != 0 && counts_same != nullptr;
  const uint8_t* mask = reinterpret_cast<const uint8_t*>(p.mask);
  int64_t* neighbors = reinterpret_cast<int64_t*>(p.neighbors);
  for (int64_t k = 0; k < R; ++k) {
    counts[k] = 0;
    if (counts_same) counts_same[k] = 0;
  }
  if (N < 2 || R == 0) return;
  // Tile pairs: of the whole set, or of each class (class c owns items [tiles[c], tiles[c+1])).
  const int64_t C = by_class ? p.C : 1;
  std::vector<int64_t> bounds{0, N}, tiles{0, 0};
  if (by_class) {
    const int64_t* off = reinterpret_cast<const int64_t*>(p.class_offsets);
    bounds.assign(off, off + C + 1);
    tiles.assign(C + 1, 0);
  }
  double work = 0;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t n = bounds[c + 1] - bounds[c], nb = ceil_div(n, kTile);
    tiles[c + 1] = tiles[c] + nb * (nb + 1) / 2;
    work += double(n) * double(n) * double(D) / 2;
  }
  Counters stats;
  const int threads = thread_count(p.num_threads, work);
  const Frame frame = make_frame(p.x, nullptr, threads);
  Scaled s;  // row-major scaled points (whole-set mode; classes read rows out of the panels)
  if (!by_class) scale_points(p.x, frame, s, threads);
  const double* radii = reinterpret_cast<const double*>(p.radii);
  std::vector<float> lo(R), hi(R);
  std::vector<double> eps2(R);
  float hi_max = 0.f;
  for (int64_t k = 0; k < R; ++k) {
    const float e = scaled_radius(radii[k], frame.scale);
    lo[k] = threshold_lo(e);
    hi[k] = threshold_hi(e);
    eps2[k] = radii[k] * radii[k];
    hi_max = std::max(hi_max, hi[k]);
  }
  // Group labels as dense int32 ids, so W of them fit a vector.
  Buffer<int32_t> lab(ceil_div(N, W) * W + W);
  if (grouped) {
    const int64_t* gl = reinterpret_cast<const int64_t*>(p.groups);
    std::vector<int64_t> vals(N);
    for (int64_t i = 0; i < N; ++i) vals[i] = gl[i * p.groups_stride];
    std::vector<int64_t> uniq(vals);
    std::sort(uniq.begin(), uniq.end());
    uniq.erase(std::unique(uniq.begin(), uniq.end()), uniq.end());
    for (int64_t i = 0; i < N; ++i)
      lab[i] = int32_t(std::lower_bound(uniq.begin(), uniq.end(), vals[i]) - uniq.begin());
  }
  // Mask bits as int32 lanes too (1 everywhere without a mask).
  Buffer<int32_t> inmask(ceil_div(N, W) * W + W);
  for (int64_t i = 0; i < N; ++i) inmask[i] = mask ? int32_t(mask[i] != 0) : 1;
  // Panels, packed once: with classes every class starts on a panel of its own (padding lanes
  // between classes), so each class's tile columns are whole panels.
  std::vector<int64_t> panel_start(C + 1, 0);
  for (int64_t c = 0; c < C; ++c)
    panel_start[c + 1] = panel_start[c] + ceil_div(bounds[c + 1] - bounds[c], W) * W;
  Panels pn;
  if (by_class) {
    std::vector<int64_t> source(panel_start[C], -1);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = bounds[c]; i < bounds[c + 1]; ++i) source[panel_start[c] + i - bounds[c]] = i;
    scale_into_panels(p.x, frame, source, pn, threads);
  } else {
    pack(s, N, [](int64_t j) { return j; }, pn, threads);
  }
  const float* xd = reinterpret_cast<const float*>(p.x.data);
  std::vector<int64_t> total(R, 0), same(R, 0);
  std::mutex reduce;

  parallel_for(tiles[C], threads, [&](int64_t item) {
    const int64_t c = std::upper_bound(tiles.begin(), tiles.end(), item) - tiles.begin() - 1;
    int64_t bi, bj;
    tile_pair(item - tiles[c], bi, bj);
    const int64_t start = bounds[c], end = bounds[c + 1];
    const int64_t i0 = start + bi * kTile, j0 = start + bj * kTile;
    const int64_t ni = std::min<int64_t>(kTile, end - i0), nj = std::min<int64_t>(kTile, end - j0);
    const int64_t pj = panel_start[c] + bj * kTile;  // j0's column in the panels
    const float* panels = pn.panel(pj / W);
    const float* col_norm = pn.norm.data + pj;
    const float* col_gx = pn.gx.data + pj;
    std::vector<int64_t> t_local(R, 0), s_local(R, 0);
    // Neighbour counts of this tile's rows and columns, flushed with atomics at the end.
    std::vector<int64_t> row_nb(neighbors ? kTile * R : 0), col_nb(neighbors ? kTile * R : 0);
    int64_t exact = 0;
    const float* rowp[kTile];
    float row_norm[kTile], row_gx[kTile];
    const int64_t pi = panel_start[c] + bi * kTile;  // i0's lane in the panels (class mode)
    for (int64_t r = 0; r < ni; ++r) {
      if (by_class) {
        rowp[r] = pn.panel((pi + r) / W) + (pi + r) % W;
        row_norm[r] = pn.norm[pi + r];
        row_gx[r] = pn.gx[pi + r];
      } else {
        rowp[r] = s.xs.data + (i0 + r) * D;
        row_norm[r] = s.norm[i0 + r];
        row_gx[r] = s.gx[i0 + r];
      }
    }
    tile(D, rowp, ni, panels, int(ceil_div(nj, W)), [&](int64_t r, int v, vf dot) {
      const int64_t i = i0 + r, jb = j0 + v * W;
      if (jb + W - 1 <= i) return;
      const vf t = (splat(row_norm[r]) + loadf(col_norm + v * W)) - dot * 2.f;
      const vf g = splat(row_gx[r]) + loadf(col_gx + v * W);
      const vf tm = t - g;
      const vi idx = iota_from(jb);
      const uint32_t m = lanes((idx > int32_t(i)) & (idx < int32_t(end)) & ~(tm > hi_max));
      if (!m) return;
      const vf tp = t + g;
      const uint32_t sb = grouped ? lanes(loadi(lab.data + jb) == lab[i]) : 0u;
      const uint32_t mj = lanes(loadi(inmask.data + jb));
      const uint32_t both = inmask[i] ? mj : 0u;  // pairs kept by the mask
      double d2[W];
      uint32_t have = 0;
      for (int64_t k = 0; k < R; ++k) {
        uint32_t in = lanes(tp < lo[k]) & m;
        const uint32_t amb = m & ~in & ~lanes(tm > hi[k]);
        for (uint32_t b = amb; b; b &= b - 1) {
          const int l = __builtin_ctz(b);
          if (!(have >> l & 1)) {
            d2[l] = exact_d2(xd, p.x.stride_n, p.x.stride_d, i, xd, p.x.stride_n, p.x.stride_d, jb + l, D);
            have |= 1u << l;
            ++exact;
          }
          if (d2[l] <= eps2[k]) in |= 1u << l;
        }
        t_local[k] += __builtin_popcount(in & both);
        s_local[k] += __builtin_popcount(in & both & sb);
        if (neighbors && in) {
          row_nb[r * R + k] += __builtin_popcount(in & mj);
          if (inmask[i])
            for (uint32_t b = in; b; b &= b - 1) col_nb[(jb - j0 + __builtin_ctz(b)) * R + k] += 1;
        }
      }
    }, by_class ? W : 1);
    if (neighbors) {
      for (int64_t r = 0; r < kTile; ++r)
        for (int64_t k = 0; k < R; ++k) {
          if (r < ni && row_nb[r * R + k])
            std::atomic_ref<int64_t>(neighbors[(i0 + r) * R + k]).fetch_add(row_nb[r * R + k], std::memory_order_relaxed);
          if (r < nj && col_nb[r * R + k])
            std::atomic_ref<int64_t>(neighbors[(j0 + r) * R + k]).fetch_add(col_nb[r * R + k], std::memory_order_relaxed);
        }
    }
    stats.v[kStatExact].fetch_add(exact, std::memory_order_relaxed);
    stats.v[kStatTiles].fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(reduce);
    for (int64_t k = 0; k < R; ++k) {
      total[k] += t_local[k];
      same[k] += s_local[k];
    }
  });
  for (int64_t k = 0; k < R; ++k) {
    counts[k] = total[k];
    if (grouped) counts_same[k] = same[k];
  }
  stats.flush(p.stats);
}

// ---------------------------------------------------------------------------------------------
// assign

void assign_impl(const AssignParams& p) {
  const int64_t N = p.x.n, C = p.centers.n, D = p.x.d;
  int64_t* index = reinterpret_cast<int64_t*>(p.index);
  float* distance = reinterpret_cast<float*>(p.distance);
  for (int64_t i = 0; i < N; ++i) {
    index[i] = -1;
    distance[i] = INFINITY;
  }
  if (N == 0 || C == 0) return;
  Counters stats;
  const int threads = thread_count(p.num_threads, double(N) * double(C) * double(D));
  const Frame frame = make_frame(p.x, &p.centers, threads);
  Scaled sx, sc;
  scale_points(p.x, frame, sx, threads);
  scale_points(p.centers, frame, sc, threads);
  Panels pc;
  pack(sc, C, [](int64_t j) { return j; }, pc, threads);
  const double eps2 = p.eps * p.eps;
  const float hi = threshold_hi(scaled_radius(p.eps, frame.scale));
  const float* xd = reinterpret_cast<const float*>(p.x.data);
  const float* cd = reinterpret_cast<const float*>(p.centers.data);

  parallel_for(ceil_div(N, kTile), threads, [&](int64_t b) {
    const int64_t i0 = b * kTile, ni = std::min<int64_t>(kTile, N - i0);
    const float* rowp[kTile];
    double best[kTile];
    int64_t arg[kTile];
    float bound[kTile];
    for (int64_t r = 0; r < ni; ++r) {
      rowp[r] = sx.xs.data + (i0 + r) * D;
      best[r] = INFINITY;
      arg[r] = -1;
      bound[r] = hi;
    }
    int64_t exact = 0;
    for (int64_t q = 0; q < C; q += kTile) {
      const int np = int(std::min<int64_t>(kTilePanels, ceil_div(C - q, W)));
      tile(D, rowp, ni, pc.panel(q / W), np, [&](int64_t r, int v, vf dot) {
        const int64_t i = i0 + r, jb = q + v * W;
        const vf t = (splat(sx.norm[i]) + loadf(pc.norm.data + jb)) - dot * 2.f;
        const vf lower = t - (splat(sx.gx[i]) + loadf(pc.gx.data + jb));
        uint32_t m = lanes(~(lower > bound[r]) & (iota_from(jb) < int32_t(C)));
        for (; m; m &= m - 1) {
          const int64_t j = jb + __builtin_ctz(m);
          if (lower[j - jb] > bound[r]) continue;  // the bound tightened meanwhile
          ++exact;
          const double d2 = exact_d2(xd, p.x.stride_n, p.x.stride_d, i, cd, p.centers.stride_n,
                                     p.centers.stride_d, j, D);
          if (d2 <= eps2 && d2 < best[r]) {
            best[r] = d2;
            arg[r] = j;
            bound[r] = std::min(hi, candidate_bound(d2, frame.scale));
          }
        }
      });
    }
    for (int64_t r = 0; r < ni; ++r) {
      index[i0 + r] = arg[r];
      distance[i0 + r] = arg[r] >= 0 ? float(std::sqrt(best[r])) : INFINITY;
    }
    stats.v[kStatExact].fetch_add(exact, std::memory_order_relaxed);
  });
  stats.flush(p.stats);
}

}  // namespace

void components_cpu(const ComponentsParams& p) { components_impl(p); }
void count_cpu(const CountParams& p) { count_impl(p); }
void assign_cpu(const AssignParams& p) { assign_impl(p); }

}  // namespace gf::pairs::GF_CPU_VARIANT
