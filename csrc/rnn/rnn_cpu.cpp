// CPU backend: a batch tile's hidden states stay in L1 for the whole sequence; each step is a
// register-blocked [rows x K] x [K x H] product with the bias/input term as the accumulator's
// start and the activation fused into the epilogue. Tiles are spread over threads.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "parallel.h"
#include "rnn/rnn.h"
#include "rnn/rnn_common.h"
#include "simd.h"

namespace gf::rnn::GF_CPU_VARIANT {
namespace {

using simd::load;
using simd::load_as;
using simd::splat;
using simd::store;
using simd::vec;
template <class T>
constexpr int kLanes = simd::lanes<T>;
// Half a vector, for the ragged end of a padded row (H = 100 in 16-lane vectors leaves 4
// lanes); with 2-lane vectors (double on 16 bytes) rows are whole vectors only.
template <class T>
constexpr bool kHalves = kLanes<T> >= 4;
template <class T>
using hvec = simd::vec_n<T, simd::kBytes / 2>;

template <class T>
inline hvec<T> low_half(vec<T> v) {
  return simd::low_half<T, simd::kBytes>(v);
}
template <class T>
inline vec<T> widen(hvec<T> h) {  // upper half zero
  return simd::widen<T, simd::kBytes / 2>(h);
}
// dst[0:n] = src[0:n] with vector moves and a short tail: the rows are a few hundred bytes,
// where a libc memcpy call costs as much as the copy.
template <class T>
inline void copy_row(T* dst, const T* src, int64_t n) {
  constexpr int N = kLanes<T>;
  int64_t j = 0;
  for (; j + N <= n; j += N) store(dst + j, load(src + j));
  if (j == n) return;
#if GF_VECTOR_BYTES == 64
  if constexpr (std::is_same_v<T, float>) {
    const __mmask16 m = __mmask16((1u << (n - j)) - 1);
    _mm512_mask_storeu_ps(dst + j, m, _mm512_maskz_loadu_ps(m, src + j));
    return;
  }
#endif
  if constexpr (kHalves<T>)
    if (j + N / 2 <= n) {
      store(dst + j, load_as<hvec<T>>(src + j));
      j += N / 2;
    }
  for (; j < n; ++j) dst[j] = src[j];
}

// dst[c * dst_ld + r] = src[r * row_stride + c * col_stride] for a rows x cols source, in
// 16 x 16 blocks: a plain loop's strided side touches a cache line per element, and at
// H = 100 those lines outgrow L1.
template <class T>
void transpose_into(T* dst, int64_t dst_ld, const T* src, int64_t rows, int64_t cols,
                    int64_t row_stride, int64_t col_stride) {
  constexpr int64_t blk = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += blk)
    for (int64_t c0 = 0; c0 < cols; c0 += blk)
      for (int64_t c = c0; c < std::min(c0 + blk, cols); ++c)
        for (int64_t r = r0; r < std::min(r0 + blk, rows); ++r)
          dst[c * dst_ld + r] = src[r * row_stride + c * col_stride];
}

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// 64-byte aligned, zero-initialised scratch; padding lanes must stay zero.
template <class T>
struct Buffer {
  T* data = nullptr;
  size_t bytes = 0;
  // zeroed = false: every element is written before it is read (no padding lanes to keep).
  explicit Buffer(int64_t n, bool zeroed = true)
      : bytes(size_t(round_up(std::max<int64_t>(n, 1) * int64_t(sizeof(T)), 64))) {
    data = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (!data) throw std::bad_alloc();
    if (zeroed) zero();
  }
  void zero() { std::memset(data, 0, bytes); }
  ~Buffer() { std::free(data); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  T& operator[](int64_t i) { return data[i]; }
};

// Slot i of a calling thread's kept objects (X has a `shape`): reused while its shape matches
// (reused = true), else rebuilt. keep = false (too large to keep): a fresh one owned by
// `local`, this call's. Workers get pointers only, so concurrent callers never share one.
template <class X, class Make>
X* kept_or_made(std::vector<std::unique_ptr<X>>& kept, std::vector<std::unique_ptr<X>>& local,
                int64_t i, bool keep, const decltype(X::shape)& shape, Make make, bool& reused) {
  reused = false;
  if (!keep) {
    local.push_back(make());
    return local.back().get();
  }
  if (int64_t(kept.size()) <= i) kept.resize(i + 1);
  reused = kept[i] && kept[i]->shape == shape;
  if (!reused) kept[i] = make();
  return kept[i].get();
}

// Float tanh as a clamped odd/even rational function (the minimax fit Eigen uses, a few ulp):
// a dozen FMAs and one division per vector; libm's tanhf would dominate a step at small H.
inline vec<float> tanh_vec(vec<float> x) {
  x = simd::min(x, splat(7.90531110763549805f));
  x = simd::max(x, splat(-7.90531110763549805f));
  const vec<float> x2 = x * x;
  vec<float> p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = p * x2 - 8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  vec<float> q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
#if GF_VECTOR_BYTES == 64
  // Reciprocal estimate plus one Newton step: ~1 ulp, without the slow vector division.
  vec<float> r = reinterpret_cast<vec<float>>(_mm512_rcp14_ps(reinterpret_cast<__m512>(q)));
  r = r * (2.0f - q * r);
  return x * p * r;
#else
  return x * p / q;
#endif
}

enum class Epilogue { Identity, Tanh, Relu };

template <class T>
inline vec<T> apply(Epilogue e, vec<T> v) {
  if (e == Epilogue::Relu) return v > T(0) ? v : splat(T(0));
  if (e == Epilogue::Tanh) {
    if constexpr (std::is_same_v<T, float>) {
      return tanh_vec(v);
    } else {
      for (int i = 0; i < kLanes<T>; ++i) v[i] = std::tanh(v[i]);
    }
  }
  return v;
}

// out[r][col:] = e(init[r][col:] + sum_k src(r, k) * w[k][col:]) for MR rows and NV vectors;
// src(r, k) is src[r * src_ld + k], or src[r + k * src_ld] when KMajor (the operand of an
// outer-product sum, read without transposing it). With Half the last vector's upper half is
// padding (zero in init and w): only its lower half is multiplied, and it is stored as e(0).
template <class T, int MR, int NV, bool KMajor, bool Half>
inline void gemm_block(int64_t K, const T* src, int64_t src_ld, const T* w, int64_t w_ld,
                       const T* const* init, int64_t col, T* out, int64_t out_ld, Epilogue e) {
  constexpr int N = kLanes<T>;
  constexpr int NF = Half ? NV - 1 : NV;  // full vectors
  vec<T> acc[MR][NF > 0 ? NF : 1];
  hvec<T> tail[MR];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NF; ++v) acc[r][v] = load(init[r] + col + v * N);
    if constexpr (Half) tail[r] = load_as<hvec<T>>(init[r] + col + NF * N);
  }
  for (int64_t k = 0; k < K; ++k) {
    vec<T> wv[NF > 0 ? NF : 1];
    for (int v = 0; v < NF; ++v) wv[v] = load(w + k * w_ld + col + v * N);
    hvec<T> wt{};
    if constexpr (Half) wt = load_as<hvec<T>>(w + k * w_ld + col + NF * N);
    for (int r = 0; r < MR; ++r) {
      const vec<T> s = splat(KMajor ? src[k * src_ld + r] : src[r * src_ld + k]);
      for (int v = 0; v < NF; ++v) acc[r][v] += s * wv[v];
      if constexpr (Half) tail[r] += low_half<T>(s) * wt;
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NF; ++v) store(out + r * out_ld + col + v * N, apply<T>(e, acc[r][v]));
    if constexpr (Half) store(out + r * out_ld + col + NF * N, apply<T>(e, widen<T>(tail[r])));
  }
}

// Output columns [0, hp) of which the first `width` are real (the rest zero padding).
template <class T, int MR, bool KMajor>
void gemm_rows(int64_t K, const T* src, int64_t src_ld, const T* w, int64_t hp, int64_t width,
               const T* const* init, T* out, int64_t out_ld, Epilogue e) {
  constexpr int N = kLanes<T>;
  // MR * NB accumulators, NB weight vectors and a broadcast fit the registers: 6 rows x 4
  // vectors on 32 registers, 6 x 2 on 16. A single row uses each weight vector once per k, so
  // its FMAs read them from memory and only accumulators take registers: on 16 registers one
  // block covers H = 64 (7 + 1 vectors made the last block wait on FMA latency alone).
  constexpr int NB = MR == 1 ? std::min(16, simd::kRegisters - 2)
                             : std::min(8, (simd::kRegisters - 1) / (MR + 1));
  const int64_t nvec = hp / N;
  const bool half = kHalves<T> && width <= hp - N / 2;
  // Blocks of even width: a narrow last block is bound by FMA latency, not throughput.
  const int64_t blocks = (nvec + NB - 1) / NB;
  for (int64_t i = 0, c = 0; i < blocks; ++i) {
    const int64_t col = c * N;
    const int64_t nb = (i + 1) * nvec / blocks - c;
    c += nb;
    const bool last_half = half && c == nvec;
    switch (nb) {
#define GF_CASE(nv)                                                                          \
  case nv:                                                                                   \
    if constexpr (nv <= NB) {                                                                \
      if (last_half) {                                                                       \
        if constexpr (kHalves<T>)                                                            \
          gemm_block<T, MR, nv, KMajor, true>(K, src, src_ld, w, hp, init, col, out, out_ld, e); \
      } else                                                                                 \
        gemm_block<T, MR, nv, KMajor, false>(K, src, src_ld, w, hp, init, col, out, out_ld, e); \
    }                                                                                        \
    break;
      GF_CASE(1) GF_CASE(2) GF_CASE(3) GF_CASE(4) GF_CASE(5) GF_CASE(6) GF_CASE(7) GF_CASE(8)
      GF_CASE(9) GF_CASE(10) GF_CASE(11) GF_CASE(12) GF_CASE(13) GF_CASE(14) GF_CASE(15) GF_CASE(16)
#undef GF_CASE
    }
  }
}

// A tile of rows times [K x hp] weights, in blocks of up to 6 rows (each weight vector loaded
// once per 6 rows); init[r] points at row r's starting value (hp wide, zero padded), so bias
// and embedding rows are read in place.
template <class T, bool KMajor = false>
void gemm_tile(int64_t rows, int64_t K, const T* src, int64_t src_ld, const T* w, int64_t hp,
               int64_t width, const T* const* init, T* out, int64_t out_ld, Epilogue e) {
  const auto row_src = [&](int64_t r) { return KMajor ? src + r : src + r * src_ld; };
  int64_t r = 0;
  for (; r + 6 <= rows; r += 6)
    gemm_rows<T, 6, KMajor>(K, row_src(r), src_ld, w, hp, width, init + r, out + r * out_ld, out_ld, e);
  const T* s = row_src(r);
  T* o = out + r * out_ld;
  switch (rows - r) {
    case 5: gemm_rows<T, 5, KMajor>(K, s, src_ld, w, hp, width, init + r, o, out_ld, e); break;
    case 4: gemm_rows<T, 4, KMajor>(K, s, src_ld, w, hp, width, init + r, o, out_ld, e); break;
    case 3: gemm_rows<T, 3, KMajor>(K, s, src_ld, w, hp, width, init + r, o, out_ld, e); break;
    case 2: gemm_rows<T, 2, KMajor>(K, s, src_ld, w, hp, width, init + r, o, out_ld, e); break;
    case 1: gemm_rows<T, 1, KMajor>(K, s, src_ld, w, hp, width, init + r, o, out_ld, e); break;
  }
}

template <class T>
T dot_padded(const T* a, const T* b, int64_t hp) {
  constexpr int N = kLanes<T>;
  vec<T> acc{};
  for (int64_t j = 0; j < hp; j += N) acc += load(a + j) * load(b + j);
  return simd::horizontal_sum<T>(acc);
}

// Per-tile state of TrackParams: the tracked and target machines stepped alongside each row.
template <class T>
struct Tracker {
  const TrackParams* p;
  int64_t H, hp, O, I;
  const T *centers, *w_out, *b_out;
  const int64_t *center_state, *machine_next, *target_next, *target_out;
  std::vector<int64_t> q_machine, q_target, first, agree, correct;
  std::vector<float> max_dist;

  Tracker(const TrackParams* tp, int64_t rows, int64_t H_, int64_t hp_, int64_t O_, int64_t I_,
          const T* centers_, const T* w_out_, const T* b_out_)
      : p(tp), H(H_), hp(hp_), O(O_), I(I_), centers(centers_), w_out(w_out_), b_out(b_out_) {
    if (!p) return;
    center_state = reinterpret_cast<const int64_t*>(p->center_state);
    machine_next = reinterpret_cast<const int64_t*>(p->machine_next);
    target_next = reinterpret_cast<const int64_t*>(p->target_next);
    target_out = reinterpret_cast<const int64_t*>(p->target_out);
    q_machine.assign(rows, p->machine_initial);
    q_target.assign(rows, p->target_initial);
    first.assign(rows, -1);
    agree.assign(rows, 0);
    correct.assign(rows, 0);
    max_dist.assign(rows, 0.f);
  }

  void step(int64_t r, int64_t t, const T* h, int64_t symbol) {
    constexpr int N = kLanes<T>;
    int64_t nearest = -1;
    T best = std::numeric_limits<T>::infinity();
    for (int64_t s = 0; s < p->S; ++s) {
      vec<T> acc{};
      const T* c = centers + s * hp;
      for (int64_t j = 0; j < hp; j += N) {
        const vec<T> d = load(h + j) - load(c + j);
        acc += d * d;
      }
      const T d2 = simd::horizontal_sum<T>(acc);
      if (d2 < best) best = d2, nearest = s;
    }
    int64_t& qm = q_machine[r];
    int64_t& qt = q_target[r];
    qm = qm >= 0 ? machine_next[qm * I + symbol] : -1;
    qt = target_next[qt * I + symbol];
    if (qm >= 0 && nearest >= 0 && center_state[nearest] == qm)
      ++agree[r];
    else if (first[r] < 0)
      first[r] = t;
    if (O > 0) {
      int64_t arg = 0;
      T top = -std::numeric_limits<T>::infinity();
      for (int64_t o = 0; o < O; ++o) {
        const T v = dot_padded(h, w_out + o * hp, hp) + (b_out ? b_out[o] : T(0));
        if (v > top) top = v, arg = o;
      }
      if (arg == target_out[qt]) ++correct[r];
    }
    const float dist = nearest >= 0 ? float(std::sqrt(best)) : std::numeric_limits<float>::infinity();
    max_dist[r] = std::max(max_dist[r], dist);
  }

  void finish(int64_t b0) {
    for (size_t r = 0; r < first.size(); ++r) {
      reinterpret_cast<int64_t*>(p->first_disagreement)[b0 + r] = first[r];
      reinterpret_cast<int64_t*>(p->agree_steps)[b0 + r] = agree[r];
      reinterpret_cast<int64_t*>(p->correct_steps)[b0 + r] = correct[r];
      reinterpret_cast<float*>(p->max_distance)[b0 + r] = max_dist[r];
    }
  }
};

int thread_count(int requested, double flops) {
  const int hw = hardware_threads();
  if (requested <= 0)
    if (const char* env = std::getenv("GROKFAST_NUM_THREADS")) requested = std::atoi(env);
  if (requested > 0) return std::min(requested, hw);
  // Below ~1 ms of work one thread wins: a second one competes for its core with torch's
  // OpenMP workers, which keep spinning for a while after every parallel torch op.
  return flops < 1e7 ? 1 : hw;
}

// Batch rows per tile: at most 12 (the tile's states stay in L1), with a tile count
// that splits evenly over the threads.
int64_t tile_rows(int64_t M, int64_t B, int threads) {
  constexpr int64_t max_rows = 12;  // two 6-row register blocks
  int64_t tiles = std::max<int64_t>((B + max_rows - 1) / max_rows, 1) * M;
  tiles = (tiles + threads - 1) / threads * threads;
  const int64_t per_model = std::max<int64_t>(1, tiles / M);
  return std::clamp<int64_t>((B + per_model - 1) / per_model, 1, max_rows);
}

// Rows' token prefixes from a zero state, step by step while there are at most max_count
// distinct ones (binary tokens: 2, 4, 8, ... at t = 0, 1, 2, ...). Rows of one prefix have the
// same hidden state, bit for bit (each row's product runs the same operations), so the forward
// multiplies one row per prefix and the backward adds dW_hh's outer products once per prefix.
// Prefix g of step t is prefix parent[g] of step t - 1 followed by token[g]; first[g] is one
// of its rows.
struct PrefixStep {
  int64_t count = 0;
  std::vector<int64_t> group, parent, token, first;  // group: [B], each row's prefix
};
template <class TokenOf>
std::vector<PrefixStep> shared_prefixes(TokenOf token_of, int64_t B, int64_t T, int64_t I,
                                        int64_t max_count) {
  std::vector<PrefixStep> steps;
  std::vector<int64_t> table;  // (prefix of length t, token) -> prefix of length t + 1
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = t == 0 ? 1 : steps.back().count;
    if (n * I > (int64_t(1) << 16)) break;
    table.assign(n * I, -1);
    PrefixStep s;
    s.group.resize(B);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t up = t == 0 ? 0 : steps.back().group[b], id = token_of(b, t);
      int64_t& g = table[up * I + id];
      if (g < 0) {
        g = s.count++;
        s.parent.push_back(up);
        s.token.push_back(id);
        s.first.push_back(b);
      }
      s.group[b] = g;
    }
    if (s.count > max_count) break;
    steps.push_back(std::move(s));
  }
  return steps;
}

// The prefixes cut into `parts` shares of whole subtrees (a prefix's step needs only its
// parent's h), so threads can run their shares without a barrier between steps. The roots are
// the prefixes of step `split`, the first with at least 2 per part (or the last step), dealt
// out by size (prefixes below them), largest first, to the lightest share. Each step's rows
// are ordered by share: share q has rows [first_row[t][q], first_row[t][q + 1]); prefix g sits
// at row pos[t][g] and row r holds prefix members[t][r]. Steps before `split` run whole.
struct PrefixLayout {
  int64_t split = 0;
  std::vector<std::vector<int64_t>> pos, members, first_row;
};
inline PrefixLayout lay_out_prefixes(const std::vector<PrefixStep>& steps, int64_t parts) {
  const int64_t S = int64_t(steps.size());
  PrefixLayout lay;
  if (S == 0) return lay;
  int64_t& d = lay.split;
  while (d + 1 < S && steps[d].count < 2 * parts) ++d;
  std::vector<int64_t> root(steps[d].count), size(steps[d].count, 1);
  for (int64_t g = 0; g < steps[d].count; ++g) root[g] = g;
  for (int64_t t = d + 1; t < S; ++t) {
    std::vector<int64_t> next(steps[t].count);
    for (int64_t g = 0; g < steps[t].count; ++g) ++size[next[g] = root[steps[t].parent[g]]];
    root.swap(next);
  }
  std::vector<int64_t> order(size.size()), load(parts, 0);
  std::vector<std::vector<int64_t>> share(S);  // per step, each prefix's share
  share[d].resize(steps[d].count);
  for (size_t g = 0; g < order.size(); ++g) order[g] = int64_t(g);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return size[a] > size[b]; });
  for (int64_t g : order) {
    const int64_t lightest = std::min_element(load.begin(), load.end()) - load.begin();
    share[d][g] = lightest;
    load[lightest] += size[g];
  }
  lay.pos.resize(S);
  lay.members.resize(S);
  lay.first_row.assign(S, std::vector<int64_t>(parts + 1, 0));
  for (int64_t t = 0; t < S; ++t) {
    const int64_t count = steps[t].count;
    std::vector<int64_t>& pos = lay.pos[t];
    std::vector<int64_t>& first = lay.first_row[t];
    pos.resize(count);
    lay.members[t].resize(count);
    if (t < d) {
      for (int64_t g = 0; g < count; ++g) pos[g] = lay.members[t][g] = g;
      std::fill(first.begin() + 1, first.end(), count);
      continue;
    }
    if (t > d) {
      share[t].resize(count);
      for (int64_t g = 0; g < count; ++g) share[t][g] = share[t - 1][steps[t].parent[g]];
    }
    for (int64_t g = 0; g < count; ++g) ++first[share[t][g] + 1];
    for (int64_t q = 0; q < parts; ++q) first[q + 1] += first[q];
    std::vector<int64_t> fill(first.begin(), first.end() - 1);
    for (int64_t g = 0; g < count; ++g) {
      pos[g] = fill[share[t][g]]++;
      lay.members[t][pos[g]] = g;
    }
  }
  return lay;
}

template <class T>
void forward_impl(const ForwardParams& p) {
  constexpr int N = kLanes<T>;
  const int64_t M = p.M, B = p.B, T_ = p.T, I = p.I, H = p.H, O = p.O;
  if (M == 0 || B == 0 || T_ == 0) {
    // Nothing to run; the last hidden state is h0 when T == 0.
    if (p.h_last && T_ == 0)
      for (int64_t i = 0; i < M * B * H; ++i)
        reinterpret_cast<T*>(p.h_last)[i] = p.h0 ? reinterpret_cast<const T*>(p.h0)[i] : T(0);
    return;
  }
  const int64_t hp = round_up(H, N);
  const int64_t K = H + (p.tokens ? 0 : I);  // dense input rides along as extra source columns
  const T* w_ih = reinterpret_cast<const T*>(p.w_ih);
  const auto w_in = [&](int64_t m, int64_t j, int64_t i) {  // W_ih[m][j][i]
    return w_ih[m * H * I + j * p.w_ih_stride_h + i * p.w_ih_stride_i];
  };
  const T* w_hh = reinterpret_cast<const T*>(p.w_hh);
  const T* bias = reinterpret_cast<const T*>(p.bias);
  const T* h0 = reinterpret_cast<const T*>(p.h0);
  const T* w_out = reinterpret_cast<const T*>(p.w_out);
  const T* b_out = reinterpret_cast<const T*>(p.b_out);
  T* y = reinterpret_cast<T*>(p.y);
  T* h_all = reinterpret_cast<T*>(p.h_all);
  T* h_last = reinterpret_cast<T*>(p.h_last);
  const int64_t* ids = reinterpret_cast<const int64_t*>(p.x);
  const T* xs = reinterpret_cast<const T*>(p.x);
  const bool readout = O > 0 && p.y_mode != OutputMode::None;

  // Per model: [W_hh^T; W_ih^T] padded to hp columns; bias + embedding rows (each token's
  // starting value); readout rows. Padding lanes stay zero, so padded h lanes stay act(0) = 0.
  // Kept by the calling thread between calls of the same shape (refilled, not reallocated:
  // fresh buffers cost an allocation and a zero-fill of cold memory per call).
  const int64_t in_rows = p.tokens ? I : 0;
  struct Padded {
    std::array<int64_t, 5> shape;
    Buffer<T> w, start, out;
    Padded(const std::array<int64_t, 5>& s)  // s: K, H, hp, in_rows, O
        : shape(s), w(s[0] * s[2]), start((s[3] + 1) * s[2]), out(s[4] * s[2]) {}
  };
  const std::array<int64_t, 5> padded_shape{K, H, hp, in_rows, O};
  thread_local std::vector<std::unique_ptr<Padded>> kept;
  std::vector<std::unique_ptr<Padded>> unkept;
  std::vector<Buffer<T>*> wcat(M), start(M), wout_p(M);
  {
    const bool keep = M * (K + in_rows + 1 + O) * hp * int64_t(sizeof(T)) <= (int64_t(8) << 20);
    for (int64_t m = 0; m < M; ++m) {
      bool reused;  // either way prepare() refills it whole, padding aside
      Padded* pad = kept_or_made(kept, unkept, m, keep, padded_shape,
                                 [&] { return std::make_unique<Padded>(padded_shape); }, reused);
      wcat[m] = &pad->w;
      start[m] = &pad->start;
      wout_p[m] = &pad->out;
    }
  }
  const auto prepare = [&](int64_t m) {
    Buffer<T>& w = *wcat[m];
    transpose_into(w.data, hp, w_hh + m * H * H, H, H, H, 1);
    transpose_into(w.data + H * hp, hp, w_ih + m * H * I, H, K - H, p.w_ih_stride_h,
                   p.w_ih_stride_i);
    Buffer<T>& st = *start[m];  // row 0: bias alone
    for (int64_t i = 0; i <= in_rows; ++i)
      for (int64_t j = 0; j < H; ++j)
        st[i * hp + j] = (bias ? bias[m * H + j] : T(0)) + (i > 0 ? w_in(m, j, i - 1) : T(0));
    for (int64_t o = 0; o < O; ++o)
      for (int64_t j = 0; j < H; ++j) (*wout_p[m])[o * hp + j] = w_out[(m * O + o) * H + j];
  };

  const TrackParams* tr = p.track;
  std::unique_ptr<Buffer<T>> centers_p;  // tracked centers, padded like h
  if (tr) {
    centers_p = std::make_unique<Buffer<T>>(tr->S * hp);
    const T* c = reinterpret_cast<const T*>(tr->centers);
    for (int64_t s = 0; s < tr->S; ++s)
      std::memcpy(centers_p->data + s * hp, c + s * H, H * sizeof(T));
  }
  const auto token = [&](int64_t m, int64_t b, int64_t t) -> int64_t {
    if (p.generate_tokens) return random_symbol(p.seed, m * B + b, t, I);
    const int64_t id = ids[m * p.x_stride_m + b * p.x_stride_b + t * p.x_stride_t];
    // Checked here rather than by torch reductions in Python: those start torch's OpenMP
    // workers, which then spin on the core this kernel's second thread needs.
    if (id < 0 || id >= I)
      throw std::invalid_argument("x: token ids must lie in [0, " + std::to_string(I) +
                                  ") (the columns of w_ih), got " + std::to_string(id));
    return id;
  };

  const Epilogue act = p.activation == Activation::Relu ? Epilogue::Relu : Epilogue::Tanh;
  // Rows of the source buffers: [h (vector stores spill up to hp) | x_t (dense input)].
  const int64_t ks = std::max(K, hp);
  const int threads = thread_count(p.num_threads, double(M) * B * T_ * K * H * 2);
  const int64_t bt = tile_rows(M, B, threads);
  const int64_t tiles = (B + bt - 1) / bt;
  const auto emit_y = [&](int64_t t) {
    return readout && (p.y_mode == OutputMode::All || t == T_ - 1);
  };
  const auto readout_of = [&](int64_t m, const T* h, int64_t o) {
    return dot_padded(h, wout_p[m]->data + o * hp, hp) + (b_out ? b_out[m * O + o] : T(0));
  };
  const auto y_row = [&](int64_t m, int64_t b, int64_t t) {
    return y + (p.y_mode == OutputMode::All ? ((m * B + b) * T_ + t) * O : (m * B + b) * O);
  };

  // Prefix sharing (see shared_prefixes): the early steps multiply one row per distinct
  // prefix; the tiles then copy each of their rows' shared steps out and go on from there.
  struct Shared {
    std::vector<PrefixStep> steps;
    std::unique_ptr<Buffer<T>> h_rows;          // h: per step [count, ks]: h_t per prefix,
    std::vector<T*> h;                          // (the product writes whole padded rows)
    std::vector<std::vector<int64_t>> pos;      // prefix g's at row pos[t][g]
    std::vector<std::vector<T>> y;              // per step [count, O] (readout steps only)
  };
  std::vector<Shared> shared(M);
  const bool share = p.tokens && !h0 && !tr;
  const auto find_prefixes = [&](int64_t m) {  // past B / 2 the per-row work costs about the same
    shared[m].steps = shared_prefixes([&](int64_t b, int64_t t) { return token(m, b, t); }, B, T_, I,
                                      B / 2);
  };
  // The weights' padded copies and the token prefixes side by side: neither needs the other.
  // Not for a single tile: its thread would run the sequence while the pool's woken worker
  // spins on the other core for a while (a sibling hyperthread on some machines).
  const bool one_tile = M * tiles == 1;
  if (share && !one_tile)
    parallel_for(2 * M, threads, [&](int64_t i) {
      if (i < M)
        prepare(i);
      else
        find_prefixes(i - M);
    });
  else
    parallel_for(M, one_tile ? 1 : threads, [&](int64_t m) {
      prepare(m);
      if (share) find_prefixes(m);
    });
  if (share) {
    // Models side by side on one thread each, or one model at a time with its prefixes in
    // shares of whole subtrees (lay_out_prefixes), one per thread.
    const int64_t parts = one_tile ? 1 : std::max<int64_t>(1, threads / M);
    parallel_for(M, int(std::min<int64_t>(threads, M)), [&](int64_t m) {
      Shared& sh = shared[m];
      const int64_t S = int64_t(sh.steps.size());
      if (S == 0) return;
      PrefixLayout lay = lay_out_prefixes(sh.steps, parts);
      int64_t rows = 0;
      for (const PrefixStep& step : sh.steps) rows += step.count;
      sh.h_rows = std::make_unique<Buffer<T>>(rows * ks, false);
      rows = 0;
      for (int64_t t = 0; t < S; ++t) {
        sh.h.push_back(sh.h_rows->data + rows * ks);
        rows += sh.steps[t].count;
        sh.y.emplace_back(emit_y(t) ? sh.steps[t].count * O : 0);
      }
      sh.pos = std::move(lay.pos);
      // Rows [lo, hi) of step t.
      const auto run_rows = [&](int64_t t, int64_t lo, int64_t hi, Buffer<T>& parents_h,
                                std::vector<const T*>& init) {
        const PrefixStep& step = sh.steps[t];
        const int64_t* mem = lay.members[t].data();
        for (int64_t r = lo; r < hi; ++r) init[r - lo] = start[m]->data + (1 + step.token[mem[r]]) * hp;
        T* out = sh.h[t] + lo * ks;
        if (t == 0) {  // h_{-1} = 0: the token's starting row alone
          gemm_tile<T>(hi - lo, 0, out, ks, wcat[m]->data, hp, H, init.data(), out, ks, act);
        } else {
          const T* prev_h = sh.h[t - 1];
          for (int64_t r = lo; r < hi; ++r)  // each prefix's parent row of h_{t-1}
            copy_row(parents_h.data + (r - lo) * ks, prev_h + sh.pos[t - 1][step.parent[mem[r]]] * ks, hp);
          gemm_tile<T>(hi - lo, H, parents_h.data, ks, wcat[m]->data, hp, H, init.data(), out, ks, act);
        }
        if (!sh.y[t].empty())
          for (int64_t r = lo; r < hi; ++r)
            for (int64_t o = 0; o < O; ++o)
              sh.y[t][mem[r] * O + o] = readout_of(m, sh.h[t] + r * ks, o);
      };
      int64_t widest = 0;
      for (const PrefixStep& step : sh.steps) widest = std::max(widest, step.count);
      const auto run_part = [&](int64_t q) {  // q < 0: the steps before the split, whole
        Buffer<T> parents_h(widest * ks, false);  // whole padded rows copied in
        std::vector<const T*> init(widest);
        if (q < 0)
          for (int64_t t = 0; t < lay.split; ++t) run_rows(t, 0, sh.steps[t].count, parents_h, init);
        else
          for (int64_t t = lay.split; t < S; ++t)
            run_rows(t, lay.first_row[t][q], lay.first_row[t][q + 1], parents_h, init);
      };
      run_part(-1);
      parallel_for(parts, int(parts), run_part);
    });
  }

  parallel_for(M * tiles, threads, [&](int64_t item) {
    const int64_t m = item / tiles, b0 = (item % tiles) * bt, rows = std::min(bt, B - b0);
    Buffer<T> src_a(bt * ks), src_b(bt * ks);
    std::vector<const T*> init(bt);
    T* src = src_a.data;
    T* nxt = src_b.data;
    const Shared& sh = shared[m];
    const int64_t shared_steps = int64_t(sh.steps.size());
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = b0 + r;
      if (h0) std::memcpy(src + r * ks, h0 + (m * B + b) * H, H * sizeof(T));
      for (int64_t t = 0; t < shared_steps; ++t) {  // this row's shared steps
        const int64_t g = sh.steps[t].group[b];
        const T* h = sh.h[t] + sh.pos[t][g] * ks;
        if (h_all) copy_row(h_all + ((m * B + b) * T_ + t) * H, h, H);
        if (!sh.y[t].empty()) std::copy_n(sh.y[t].data() + g * O, O, y_row(m, b, t));
        if (t + 1 == shared_steps) copy_row(src + r * ks, h, hp);
      }
    }
    const T* wm = wcat[m]->data;
    const T* st = start[m]->data;
    Tracker<T> track(tr, rows, H, hp, O, I, centers_p ? centers_p->data : nullptr,
                     wout_p[m]->data, b_out ? b_out + m * O : nullptr);
    for (int64_t t = shared_steps; t < T_; ++t) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t b = b0 + r;
        if (p.tokens) {
          init[r] = st + (1 + token(m, b, t)) * hp;
        } else {
          init[r] = st;
          const T* xr = xs + m * p.x_stride_m + b * p.x_stride_b + t * p.x_stride_t;
          for (int64_t i = 0; i < I; ++i) src[r * ks + H + i] = xr[i * p.x_stride_i];
        }
      }
      if (t == 0 && !h0)  // h_{-1} = 0: only the dense input columns (none for tokens) remain
        gemm_tile<T>(rows, K - H, src + H, ks, wm + H * hp, hp, H, init.data(), nxt, ks, act);
      else
        gemm_tile<T>(rows, K, src, ks, wm, hp, H, init.data(), nxt, ks, act);
      const bool y_step = emit_y(t);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t b = b0 + r;
        const T* h = nxt + r * ks;
        if (h_all) copy_row(h_all + ((m * B + b) * T_ + t) * H, h, H);
        if (y_step) {
          T* yr = y_row(m, b, t);
          for (int64_t o = 0; o < O; ++o) yr[o] = readout_of(m, h, o);
        }
        if (tr) track.step(r, t, h, token(m, b, t));
      }
      std::swap(src, nxt);
    }
    if (tr) track.finish(b0);
    if (h_last)
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(h_last + (m * B + b0 + r) * H, src + r * ks, H * sizeof(T));
  });
}

// Rows of [B, T, ...] arrays lie T rows apart, too far for the hardware prefetcher: a step
// asks for the next step's rows while its product runs (write = 1 for rows it will store).
inline void prefetch_bytes(const void* p, int64_t bytes, int write = 0) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) {  // into L2: the product streams L1 meanwhile
    if (write)
      __builtin_prefetch(c + i, 1, 2);
    else
      __builtin_prefetch(c + i, 0, 2);
  }
}

template <class T>
inline vec<T> activation_grad_vec(Activation a, vec<T> h) {
  if (a == Activation::Relu) return h > T(0) ? splat(T(1)) : splat(T(0));
  return T(1) - h * h;
}

// dst[0:n] += sum_i scale_i * rows[i][0:n] (scale 1 without scales; n whole vectors), with
// NV vectors of the sum in registers, each an independent chain: one accumulator per vector
// would chain every row behind the previous row's add.
template <class T, int NV, bool Scaled>
inline void add_row_sum_block(T* dst, const T* const* rows, const T* scales, int64_t count,
                              int64_t j0) {
  constexpr int N = kLanes<T>;
  vec<T> acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = vec<T>{};
  for (int64_t i = 0; i < count; ++i) {
    const T* row = rows[i] + j0;
    if constexpr (Scaled) {
      const vec<T> s = splat(scales[i]);
      for (int v = 0; v < NV; ++v) acc[v] += s * load(row + v * N);
    } else {
      for (int v = 0; v < NV; ++v) acc[v] += load(row + v * N);
    }
  }
  for (int v = 0; v < NV; ++v) store(dst + j0 + v * N, load(dst + j0 + v * N) + acc[v]);
}
template <class T>
inline void add_row_sum(T* dst, int64_t n, const T* const* rows, const T* scales, int64_t count) {
  constexpr int N = kLanes<T>, NB = 8;
  for (int64_t j0 = 0; j0 < n; j0 += NB * N) {
    switch (std::min<int64_t>(NB, (n - j0) / N)) {
#define GF_CASE(nv)                                                              \
  case nv:                                                                       \
    if (scales)                                                                  \
      add_row_sum_block<T, nv, true>(dst, rows, scales, count, j0);              \
    else                                                                         \
      add_row_sum_block<T, nv, false>(dst, rows, scales, count, j0);             \
    break;
      GF_CASE(1) GF_CASE(2) GF_CASE(3) GF_CASE(4) GF_CASE(5) GF_CASE(6) GF_CASE(7) GF_CASE(8)
#undef GF_CASE
    }
  }
}

// A tile's share of dW_hh = sum_t dz_t h_{t-1}^T, gathered as (dz, h) row pairs (hp wide) and
// added as one [H x kc] x [kc x hp] product per kc pairs, the dz rows read k-major.
template <class T>
struct OuterSum {
  static constexpr int64_t kc = 128;
  int64_t H, hp, k = 0;
  Buffer<T> a, b, sum;  // sum: [H, hp]
  std::vector<const T*> rows;

  OuterSum(int64_t H_, int64_t hp_) : H(H_), hp(hp_), a(kc * hp_), b(kc * hp_), sum(H_ * hp_), rows(H_) {
    for (int64_t i = 0; i < H; ++i) rows[i] = sum.data + i * hp;
  }
  void push(const T* dz, const T* h) {
    copy_row(a.data + k * hp, dz, hp);
    copy_row(b.data + k * hp, h, hp);
    if (++k == kc) flush();
  }
  void flush() {
    if (k) gemm_tile<T, true>(H, k, a.data, hp, b.data, hp, H, rows.data(), sum.data, hp, Epilogue::Identity);
    k = 0;
  }
};

// BPTT over a tile's rows, t = T-1 .. 0: dz_t = (g_t + W_hh^T dz_{t+1} + W_out^T gy_t) *
// act'(h_t), one product per step with gy_t riding along as extra source columns, and the
// weight-gradient sums gathered on the way. Rows are hp wide with zero padding, so every loop
// is whole vectors. Where dz_{t+1} = 0 (t = T-1) only the readout columns are multiplied, and
// the extra product for dL/dh0 runs only when asked for.
template <class T>
void backward_impl(const BackwardParams& p) {
  const int64_t M = p.M, B = p.B, T_ = p.T, H = p.H, I = p.I, O = p.O;
  // The sums are overwritten (callers allocate them without a fill): by each model's first
  // flush_sums below, or here when there is nothing to run (callers handle T == 0 without a
  // kernel).
  if (M == 0 || B == 0 || T_ == 0) {
    const auto zero = [](ptr_t out, int64_t n) {
      if (out) std::memset(reinterpret_cast<void*>(out), 0, size_t(n) * sizeof(T));
    };
    zero(p.d_bias, M * H);
    zero(p.ids ? p.d_w_ih : 0, M * H * I);  // each model's H * I block, in either layout
    zero(p.d_w_out, M * O * H);
    zero(p.d_b_out, M * O);
    zero(p.d_w_hh, M * H * H);
    return;
  }
  constexpr int N = kLanes<T>;
  const int64_t hp = round_up(H, N);
  const T* states = reinterpret_cast<const T*>(p.states);
  const T* w_hh = reinterpret_cast<const T*>(p.w_hh);
  const T* g_all = reinterpret_cast<const T*>(p.g_all);
  const T* g_last = reinterpret_cast<const T*>(p.g_last);
  const T* gy = reinterpret_cast<const T*>(p.gy);
  const T* w_out = reinterpret_cast<const T*>(p.w_out);
  const int64_t* ids = reinterpret_cast<const int64_t*>(p.ids);
  T* dz_next = reinterpret_cast<T*>(p.dz_next);
  T* dz0 = reinterpret_cast<T*>(p.dz0);
  T* dh0 = reinterpret_cast<T*>(p.dh0);
  T* d_bias = reinterpret_cast<T*>(p.d_bias);
  T* d_w_ih = ids ? reinterpret_cast<T*>(p.d_w_ih) : nullptr;
  T* d_w_out = reinterpret_cast<T*>(p.d_w_out);
  T* d_b_out = reinterpret_cast<T*>(p.d_b_out);
  T* d_w_hh = reinterpret_cast<T*>(p.d_w_hh);
  const T* h0 = reinterpret_cast<const T*>(p.h0);
  const bool has_gy = gy && O > 0 && p.gy_mode != OutputMode::None;
  const int64_t Oy = has_gy ? O : 0;
  const Activation act = p.activation;

  const int64_t ks = round_up(H + Oy, N);  // source row stride
  const int threads = thread_count(p.num_threads, double(M) * B * T_ * H * H * (d_w_hh ? 4 : 2));
  const int64_t bt = tile_rows(M, B, threads);
  const int64_t tiles = (B + bt - 1) / bt;

  // Sums are deterministic (the same bits at any thread timing): the tiles are cut into fixed
  // chunks, each with its own step buffers and sums. With M >= threads a chunk holds whole
  // models, so each model's sums come from one chunk; otherwise a chunk holds part of one
  // model, and a model's chunks are added in chunk order at the end.
  struct Scratch {
    std::array<int64_t, 6> shape;
    int64_t m = -1;
    // w: the chunk's model's [H + Oy] x [hp] operand [W_hh; W_out] for source rows
    // [dz_{t+1} | gy_t], copied by each chunk (in parallel, into its own core's cache).
    Buffer<T> w, src_a, src_b, z, g, h_a, h_b, zero_row, bias_sum, emb_sum, wout_sum, bout_sum;
    OuterSum<T> outer;
    std::vector<const T*> init, d_rows, group;
    std::vector<int64_t> row_id;
    std::vector<T> scale;
    // The token prefixes of the rows [prefix_b0, ..) the chunk runs of its current model, and
    // dz_t summed per prefix of h_{t-1} (all steps' prefixes, prefix_offset); zero between
    // models.
    std::vector<PrefixStep> prefixes;
    std::vector<int64_t> prefix_offset;
    int64_t prefix_b0 = 0;
    std::vector<T> prefix_sum;
    bool clean = true;  // false from a call's start until its sums are flushed
    Scratch(int64_t bt, int64_t ks, int64_t H, int64_t hp, int64_t I, int64_t O)
        : shape{bt, ks, H, hp, I, O}, w((H + O) * hp), src_a(bt * ks), src_b(bt * ks), z(bt * hp), g(bt * hp),
          h_a(bt * hp), h_b(bt * hp), zero_row(hp), bias_sum(hp), emb_sum(I * hp), wout_sum(O * hp),
          bout_sum(O), outer(H, hp), init(bt, zero_row.data), d_rows(bt), group(bt), row_id(bt),
          scale(bt) {}
    void reset() {  // sums left by a call that threw
      m = -1;
      for (Buffer<T>* b : {&g, &h_a, &h_b, &bias_sum, &emb_sum, &wout_sum, &bout_sum, &outer.sum}) b->zero();
      outer.k = 0;
      std::fill(init.begin(), init.end(), zero_row.data);
      std::fill(prefix_sum.begin(), prefix_sum.end(), T(0));
    }
  };
  const int64_t chunks_per_model = M >= threads ? 0 : std::min<int64_t>(tiles, threads / M);
  const int64_t chunks = M >= threads ? threads : M * chunks_per_model;
  // Kept by the calling thread between calls of the same shape: allocating and zeroing ~200 KB
  // per chunk and call (page faults included) cost as much as a training step's sums.
  thread_local std::vector<std::unique_ptr<Scratch>> cache;
  std::vector<std::unique_ptr<Scratch>> uncached;
  std::vector<Scratch*> scratch(chunks);
  {
    const std::array<int64_t, 6> shape{bt, ks, H, hp, I, O};
    const int64_t floats = (I + 2 * O + 2 * H + 2 * OuterSum<T>::kc + 6 * bt) * hp + 2 * bt * ks;
    const bool keep = floats * int64_t(sizeof(T)) <= (int64_t(8) << 20);  // not for huge H or I
    for (int64_t c = 0; c < chunks; ++c) {
      bool reused;
      scratch[c] = kept_or_made(cache, uncached, c, keep, shape,
                                [&] { return std::make_unique<Scratch>(bt, ks, H, hp, I, O); }, reused);
      if (reused && !scratch[c]->clean) scratch[c]->reset();
    }
    for (Scratch* sc : scratch) sc->clean = false;
  }
  // Whether a model's sums were stored: its first flush stores, later ones (other chunks of
  // the model, in chunk order) add. Chunks of whole models flush in parallel, each its own.
  std::vector<char> stored(M, 0);
  const auto flush_sums = [&](Scratch& s) {
    if (s.m < 0) return;
    const int64_t m = s.m;
    const bool first = !stored[m];
    stored[m] = 1;
    // Padded [n, hp] partial sums: row i, column j into dst[i * row_stride + j * col_stride].
    const auto add_rows = [&](T* dst, Buffer<T>& part, int64_t n, int64_t row_stride,
                              int64_t col_stride = 1) {
      for (int64_t i = 0; i < n; ++i) {
        T* d = dst + i * row_stride;
        const T* from = part.data + i * hp;
        if (col_stride != 1)
          for (int64_t j = 0; j < H; ++j) d[j * col_stride] = (first ? T(0) : d[j * col_stride]) + from[j];
        else if (first)
          std::memcpy(d, from, H * sizeof(T));
        else
          for (int64_t j = 0; j < H; ++j) d[j] += from[j];
      }
      part.zero();
    };
    if (d_w_hh) {
      s.outer.flush();
      add_rows(d_w_hh + m * H * H, s.outer.sum, H, H);
    }
    if (d_bias) add_rows(d_bias + m * H, s.bias_sum, 1, H);
    if (d_w_ih)  // token i's row of the sums is column i of dW_ih
      add_rows(d_w_ih + m * H * I, s.emb_sum, I, p.d_w_ih_stride_i, p.d_w_ih_stride_h);
    if (d_w_out) add_rows(d_w_out + m * O * H, s.wout_sum, O, H);
    if (d_b_out) {
      for (int64_t o = 0; o < O; ++o) d_b_out[m * O + o] = (first ? T(0) : d_b_out[m * O + o]) + s.bout_sum[o];
      s.bout_sum.zero();
    }
    s.m = -1;
  };
  const auto run_tile = [&](Scratch& sc, int64_t m, int64_t b0, int64_t rows) {
    if (sc.m != m) {  // a chunk of whole models moves on: model sc.m is all its own
      flush_sums(sc);
      sc.m = m;
      for (int64_t j = 0; j < H; ++j)
        std::memcpy(sc.w.data + j * hp, w_hh + (m * H + j) * H, H * sizeof(T));
      for (int64_t o = 0; o < Oy; ++o)
        std::memcpy(sc.w.data + (H + o) * hp, w_out + (m * O + o) * H, H * sizeof(T));
    }
    const auto state = [&](int64_t r, int64_t t) { return states + ((m * B + b0 + r) * T_ + t) * H; };
    std::vector<const T*>& init = sc.init;
    std::vector<const T*>& d_rows = sc.d_rows;
    std::vector<const T*>& group = sc.group;
    T* src = sc.src_a.data;  // rows [dz_{t+1} | gy_t]
    T* nxt = sc.src_b.data;
    T* h_cur = sc.h_a.data;  // h_t
    T* h_prev = sc.h_b.data;  // h_{t-1}
    T* z = sc.z.data;
    T* g = sc.g.data;
    const T* wm = sc.w.data;
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(h_cur + r * hp, state(r, T_ - 1), H * sizeof(T));
      if (dz_next) std::memset(dz_next + ((m * B + b0 + r) * T_ + T_ - 1) * H, 0, H * sizeof(T));
    }
    for (int64_t t = T_ - 1; t >= 0; --t) {
      const bool y_step = has_gy && (p.gy_mode == OutputMode::All || t == T_ - 1);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t b = b0 + r;
        if (y_step)
          copy_row(src + r * ks + H,
                   gy + (p.gy_mode == OutputMode::All ? ((m * B + b) * T_ + t) * O : (m * B + b) * O), O);
        const bool last = t == T_ - 1 && g_last;
        if (g_all || last) {  // g_t arriving from outside the readout
          T* in = g + r * hp;
          if (g_all)
            std::memcpy(in, g_all + ((m * B + b) * T_ + t) * H, H * sizeof(T));
          else
            std::memset(in, 0, H * sizeof(T));
          if (last)
            for (int64_t j = 0; j < H; ++j) in[j] += g_last[(m * B + b) * H + j];
          init[r] = in;
        }
      }
      for (int64_t r = 0; r < rows && t >= 2; ++r) {  // next step's rows
        prefetch_bytes(state(r, t - 2), H * sizeof(T));
        if (dz_next) prefetch_bytes(dz_next + ((m * B + b0 + r) * T_ + t - 2) * H, H * sizeof(T), 1);
        if (has_gy && p.gy_mode == OutputMode::All)
          prefetch_bytes(gy + ((m * B + b0 + r) * T_ + t - 1) * O, O * sizeof(T));
      }
      const int64_t k0 = t == T_ - 1 ? H : 0;  // dz_T = 0
      const int64_t k1 = y_step ? H + Oy : H;
      gemm_tile<T>(rows, k1 - k0, src + k0, ks, wm + k0 * hp, hp, H, init.data(), z, hp, Epilogue::Identity);
      const bool pair = d_w_hh && (t > 0 || h0);  // (dz_t, h_{t-1}) for dW_hh; h_{-1} = h0
      const bool by_prefix = pair && t > 0 && t - 1 < int64_t(sc.prefixes.size());
      for (int64_t r = 0; r < rows && (t > 0 || pair); ++r)  // h_{t-1}: next step's h_t
        copy_row(h_prev + r * hp, t > 0 ? state(r, t - 1) : h0 + (m * B + b0 + r) * H, H);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t b = b0 + r;
        const T* zr = z + r * hp;
        const T* h = h_cur + r * hp;
        T* d = nxt + r * ks;
        // One loop per activation (a constant argument), so the branch leaves the loop.
        if (act == Activation::Relu)
          for (int64_t j = 0; j < hp; j += N) store(d + j, load(zr + j) * activation_grad_vec<T>(Activation::Relu, load(h + j)));
        else
          for (int64_t j = 0; j < hp; j += N) store(d + j, load(zr + j) * activation_grad_vec<T>(Activation::Tanh, load(h + j)));
        T* d_out = t > 0 ? (dz_next ? dz_next + ((m * B + b) * T_ + t - 1) * H : nullptr)
                         : (dz0 ? dz0 + (m * B + b) * H : nullptr);
        if (d_out) copy_row(d_out, d, H);
        if (y_step && d_b_out)
          for (int64_t o = 0; o < O; ++o) sc.bout_sum[o] += src[r * ks + H + o];
        if (by_prefix) {
          const int64_t row = sc.prefix_offset[t - 1] + sc.prefixes[t - 1].group[b - sc.prefix_b0];
          T* sum = sc.prefix_sum.data() + row * hp;
          for (int64_t j = 0; j < hp; j += N) store(sum + j, load(sum + j) + load(d + j));
        } else if (pair) {
          sc.outer.push(d, h_prev + r * hp);
        }
        if (g_all || (t == T_ - 1 && g_last)) init[r] = sc.zero_row.data;
      }
      // The step's sums over the tile's rows: dz_t for the bias and each token's embedding row,
      // gy_t h_t^T for the readout.
      for (int64_t r = 0; r < rows; ++r) d_rows[r] = nxt + r * ks;
      if (d_bias) add_row_sum<T>(sc.bias_sum.data, hp, d_rows.data(), nullptr, rows);
      if (d_w_ih) {
        for (int64_t r = 0; r < rows; ++r) sc.row_id[r] = ids[m * p.ids_stride_m + (b0 + r) * p.ids_stride_b + t * p.ids_stride_t];
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t id = sc.row_id[r];
          if (id < 0) continue;  // summed with an earlier row of its token
          int64_t count = 0;
          for (int64_t q = r; q < rows; ++q)
            if (sc.row_id[q] == id) group[count++] = d_rows[q], sc.row_id[q] = -1;
          add_row_sum<T>(sc.emb_sum.data + id * hp, hp, group.data(), nullptr, count);
        }
      }
      if (y_step && d_w_out)
        for (int64_t o = 0; o < O; ++o) {
          for (int64_t r = 0; r < rows; ++r) group[r] = h_cur + r * hp, sc.scale[r] = src[r * ks + H + o];
          add_row_sum(sc.wout_sum.data + o * hp, hp, group.data(), sc.scale.data(), rows);
        }
      std::swap(src, nxt);
      std::swap(h_cur, h_prev);
    }
    if (d_w_hh) sc.outer.flush();  // here, not in the serial flush_sums at the end
    if (dh0) {  // one more product: dL/dh0 = W_hh^T dz_0, no activation in front of h0
      gemm_tile<T>(rows, H, src, ks, wm, hp, H, init.data(), z, hp, Epilogue::Identity);
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(dh0 + (m * B + b0 + r) * H, z + r * hp, H * sizeof(T));
    }
  };
  // dW_hh by token prefix (shared_prefixes): rows whose h_{t-1} come from one prefix add their
  // dz_t first, and the chunk multiplies each prefix's sum once. Each chunk finds the prefixes
  // of its own rows [b0, b1) of model m, in parallel. Any sharing saves products (unlike the
  // forward's), so it goes on while a step's prefixes are at most 3/4 of the rows.
  const bool share = d_w_hh && ids && !h0;
  const auto find_prefixes = [&](Scratch& sc, int64_t m, int64_t b0, int64_t b1) {
    sc.prefixes = shared_prefixes(
        [&](int64_t b, int64_t t) {
          return ids[m * p.ids_stride_m + (b0 + b) * p.ids_stride_b + t * p.ids_stride_t];
        },
        b1 - b0, T_, I, (b1 - b0) * 3 / 4);
    sc.prefix_b0 = b0;
    sc.prefix_offset.clear();
    int64_t rows = 0;
    for (const PrefixStep& step : sc.prefixes) {
      sc.prefix_offset.push_back(rows);
      rows += step.count;
    }
    sc.prefix_sum.resize(rows * hp);  // new rows zero, kept ones zeroed by multiply_prefixes
  };
  // The prefix sums, each times its prefix's h (any of its rows' state).
  const auto multiply_prefixes = [&](Scratch& sc, int64_t m) {
    T* h = sc.h_a.data;  // free after the tiles; rows are hp wide with zero padding
    for (size_t u = 0; u < sc.prefixes.size(); ++u)
      for (int64_t g = 0; g < sc.prefixes[u].count; ++g) {
        const int64_t b = sc.prefix_b0 + sc.prefixes[u].first[g];
        copy_row(h, states + ((m * B + b) * T_ + int64_t(u)) * H, H);
        T* sum = sc.prefix_sum.data() + (sc.prefix_offset[u] + g) * hp;
        sc.outer.push(sum, h);
        std::fill(sum, sum + hp, T(0));
      }
    sc.outer.flush();
    sc.prefixes.clear();
  };
  // Rows [b0, b1) of model m in tiles of at most bt rows, evenly sized.
  const auto run_rows = [&](Scratch& sc, int64_t m, int64_t b0, int64_t b1) {
    if (share) find_prefixes(sc, m, b0, b1);
    const int64_t n = b1 - b0, count = (n + bt - 1) / bt;
    for (int64_t k = 0; k < count; ++k)
      run_tile(sc, m, b0 + k * n / count, (k + 1) * n / count - k * n / count);
    multiply_prefixes(sc, m);
  };
  parallel_for(chunks, threads, [&](int64_t c) {
    Scratch& sc = *scratch[c];
    if (chunks_per_model == 0) {  // whole models [c M / chunks, (c + 1) M / chunks)
      for (int64_t m = c * M / chunks; m < (c + 1) * M / chunks; ++m) run_rows(sc, m, 0, B);
    } else {  // part j of model m: an even share of its rows
      const int64_t m = c / chunks_per_model, j = c % chunks_per_model;
      run_rows(sc, m, j * B / chunks_per_model, (j + 1) * B / chunks_per_model);
    }
  });
  for (Scratch* sc : scratch) {  // in chunk order
    flush_sums(*sc);
    sc->clean = true;
  }
}

}  // namespace

void forward_cpu(const ForwardParams& p) {
  if (p.dtype == DType::Float64)
    forward_impl<double>(p);
  else
    forward_impl<float>(p);
}

void backward_cpu(const BackwardParams& p) {
  if (p.dtype == DType::Float64)
    backward_impl<double>(p);
  else
    backward_impl<float>(p);
}

}  // namespace gf::rnn::GF_CPU_VARIANT
