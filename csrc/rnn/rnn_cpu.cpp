// CPU backend: a batch tile's hidden states stay in L1 for the whole sequence; each step is a
// register-blocked [rows x K] x [K x H] product with the bias/input term as the accumulator's
// start and the activation fused into the epilogue. Tiles are spread over threads.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "parallel.h"
#include "rnn/rnn.h"
#include "rnn/rnn_common.h"

namespace gf::rnn {
namespace {

template <class T>
struct Simd {
  static constexpr int N = 64 / int(sizeof(T));
  typedef T V __attribute__((vector_size(64)));
};
template <class T>
using vec = typename Simd<T>::V;

template <class T>
inline vec<T> load(const T* p) {
  vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
inline void store(T* p, vec<T> v) {
  std::memcpy(p, &v, sizeof v);
}
template <class T>
inline vec<T> splat(T s) {
  return vec<T>{} + s;
}

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// 64-byte aligned, zero-initialised scratch; padding lanes must stay zero.
template <class T>
struct Buffer {
  T* data = nullptr;
  explicit Buffer(int64_t n) {
    size_t bytes = size_t(round_up(std::max<int64_t>(n, 1) * int64_t(sizeof(T)), 64));
    data = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (!data) throw std::bad_alloc();
    std::memset(data, 0, bytes);
  }
  ~Buffer() { std::free(data); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  T& operator[](int64_t i) { return data[i]; }
};

// Float tanh as a clamped odd/even rational function (the minimax fit Eigen uses, a few ulp):
// a dozen FMAs and one division per vector; libm's tanhf would dominate a step at small H.
inline vec<float> tanh_vec(vec<float> x) {
#ifdef __AVX512F__
  x = reinterpret_cast<vec<float>>(_mm512_min_ps(reinterpret_cast<__m512>(x), _mm512_set1_ps(7.90531110763549805f)));
  x = reinterpret_cast<vec<float>>(_mm512_max_ps(reinterpret_cast<__m512>(x), _mm512_set1_ps(-7.90531110763549805f)));
#else
  x = x > 7.90531110763549805f ? splat(7.90531110763549805f) : x;
  x = x < -7.90531110763549805f ? splat(-7.90531110763549805f) : x;
#endif
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
#ifdef __AVX512F__
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
      for (int i = 0; i < Simd<T>::N; ++i) v[i] = std::tanh(v[i]);
    }
  }
  return v;
}

// out[r][col:] = e(init[r][col:] + sum_k src[r][k] * w[k][col:]) for MR rows and NV vectors.
template <class T, int MR, int NV>
inline void gemm_block(int64_t K, const T* src, int64_t src_ld, const T* w, int64_t w_ld,
                       const T* const* init, int64_t col, T* out, int64_t out_ld, Epilogue e) {
  constexpr int N = Simd<T>::N;
  vec<T> acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = load(init[r] + col + v * N);
  for (int64_t k = 0; k < K; ++k) {
    vec<T> wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = load(w + k * w_ld + col + v * N);
    for (int r = 0; r < MR; ++r) {
      const vec<T> s = splat(src[r * src_ld + k]);
      for (int v = 0; v < NV; ++v) acc[r][v] += s * wv[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) store(out + r * out_ld + col + v * N, apply<T>(e, acc[r][v]));
}

template <class T, int MR>
void gemm_rows(int64_t K, const T* src, int64_t src_ld, const T* w, int64_t hp,
               const T* const* init, T* out, int64_t out_ld, Epilogue e) {
  constexpr int N = Simd<T>::N;
  constexpr int NB = MR <= 2 ? 8 : 4;  // MR * NB accumulators + NB weights fit 32 registers
  const int64_t nvec = hp / N;
  for (int64_t c = 0; c < nvec; c += NB) {
    const int64_t col = c * N;
    switch (std::min<int64_t>(NB, nvec - c)) {
#define GF_CASE(nv)                                                                   \
  case nv:                                                                            \
    if constexpr (nv <= NB)                                                           \
      gemm_block<T, MR, nv>(K, src, src_ld, w, hp, init, col, out, out_ld, e);        \
    break;
      GF_CASE(1) GF_CASE(2) GF_CASE(3) GF_CASE(4) GF_CASE(5) GF_CASE(6) GF_CASE(7) GF_CASE(8)
#undef GF_CASE
    }
  }
}

// A tile of rows times [K x hp] weights, in blocks of up to 6 rows (each weight vector loaded
// once per 6 rows); init[r] points at row r's starting value (hp wide, zero padded), so bias
// and embedding rows are read in place.
template <class T>
void gemm_tile(int64_t rows, int64_t K, const T* src, int64_t src_ld, const T* w, int64_t hp,
               const T* const* init, T* out, int64_t out_ld, Epilogue e) {
  int64_t r = 0;
  for (; r + 6 <= rows; r += 6)
    gemm_rows<T, 6>(K, src + r * src_ld, src_ld, w, hp, init + r, out + r * out_ld, out_ld, e);
  const T* s = src + r * src_ld;
  T* o = out + r * out_ld;
  switch (rows - r) {
    case 5: gemm_rows<T, 5>(K, s, src_ld, w, hp, init + r, o, out_ld, e); break;
    case 4: gemm_rows<T, 4>(K, s, src_ld, w, hp, init + r, o, out_ld, e); break;
    case 3: gemm_rows<T, 3>(K, s, src_ld, w, hp, init + r, o, out_ld, e); break;
    case 2: gemm_rows<T, 2>(K, s, src_ld, w, hp, init + r, o, out_ld, e); break;
    case 1: gemm_rows<T, 1>(K, s, src_ld, w, hp, init + r, o, out_ld, e); break;
  }
}

template <class T>
inline T horizontal_sum(vec<T> v) {
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float>)
    return _mm512_reduce_add_ps(reinterpret_cast<__m512>(v));
  else
    return _mm512_reduce_add_pd(reinterpret_cast<__m512d>(v));
#else
  T lanes[Simd<T>::N];
  std::memcpy(lanes, &v, sizeof v);
  for (int width = Simd<T>::N / 2; width > 0; width /= 2)
    for (int i = 0; i < width; ++i) lanes[i] += lanes[i + width];
  return lanes[0];
#endif
}

template <class T>
T dot_padded(const T* a, const T* b, int64_t hp) {
  constexpr int N = Simd<T>::N;
  vec<T> acc{};
  for (int64_t j = 0; j < hp; j += N) acc += load(a + j) * load(b + j);
  return horizontal_sum<T>(acc);
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
    constexpr int N = Simd<T>::N;
    int64_t nearest = -1;
    T best = std::numeric_limits<T>::infinity();
    for (int64_t s = 0; s < p->S; ++s) {
      vec<T> acc{};
      const T* c = centers + s * hp;
      for (int64_t j = 0; j < hp; j += N) {
        const vec<T> d = load(h + j) - load(c + j);
        acc += d * d;
      }
      const T d2 = horizontal_sum<T>(acc);
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

template <class T>
void forward_impl(const ForwardParams& p) {
  constexpr int N = Simd<T>::N;
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
  const T* w_ih_t = reinterpret_cast<const T*>(p.w_ih_t);
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
  const int64_t in_rows = p.tokens ? I : 0;
  std::vector<std::unique_ptr<Buffer<T>>> wcat(M), start(M), wout_p(M);
  for (int64_t m = 0; m < M; ++m) {
    wcat[m] = std::make_unique<Buffer<T>>(K * hp);
    Buffer<T>& w = *wcat[m];
    for (int64_t j = 0; j < H; ++j)
      for (int64_t k = 0; k < H; ++k) w[k * hp + j] = w_hh[(m * H + j) * H + k];
    for (int64_t i = 0; i < K - H; ++i)
      for (int64_t j = 0; j < H; ++j) w[(H + i) * hp + j] = w_ih_t[(m * I + i) * H + j];
    start[m] = std::make_unique<Buffer<T>>((in_rows + 1) * hp);  // row 0: bias alone
    Buffer<T>& st = *start[m];
    for (int64_t i = 0; i <= in_rows; ++i)
      for (int64_t j = 0; j < H; ++j)
        st[i * hp + j] = (bias ? bias[m * H + j] : T(0)) + (i > 0 ? w_ih_t[(m * I + i - 1) * H + j] : T(0));
    wout_p[m] = std::make_unique<Buffer<T>>(O * hp);
    for (int64_t o = 0; o < O; ++o)
      for (int64_t j = 0; j < H; ++j) (*wout_p[m])[o * hp + j] = w_out[(m * O + o) * H + j];
  }

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
    return ids[m * p.x_stride_m + b * p.x_stride_b + t * p.x_stride_t];
  };

  const Epilogue act = p.activation == Activation::Relu ? Epilogue::Relu : Epilogue::Tanh;
  // Rows of the source buffers: [h (vector stores spill up to hp) | x_t (dense input)].
  const int64_t ks = std::max(K, hp);
  const int threads = thread_count(p.num_threads, double(M) * B * T_ * K * H * 2);
  const int64_t bt = tile_rows(M, B, threads);
  const int64_t tiles = (B + bt - 1) / bt;
  parallel_for(M * tiles, threads, [&](int64_t item) {
    const int64_t m = item / tiles, b0 = (item % tiles) * bt, rows = std::min(bt, B - b0);
    Buffer<T> src_a(bt * ks), src_b(bt * ks);
    std::vector<const T*> init(bt);
    T* src = src_a.data;
    T* nxt = src_b.data;
    for (int64_t r = 0; r < rows; ++r)
      if (h0) std::memcpy(src + r * ks, h0 + (m * B + b0 + r) * H, H * sizeof(T));
    const T* wm = wcat[m]->data;
    const T* st = start[m]->data;
    Tracker<T> track(tr, rows, H, hp, O, I, centers_p ? centers_p->data : nullptr,
                     wout_p[m]->data, b_out ? b_out + m * O : nullptr);
    for (int64_t t = 0; t < T_; ++t) {
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
      gemm_tile<T>(rows, K, src, ks, wm, hp, init.data(), nxt, ks, act);
      const bool emit_y = readout && (p.y_mode == OutputMode::All || t == T_ - 1);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t b = b0 + r;
        const T* h = nxt + r * ks;
        if (h_all) std::memcpy(h_all + ((m * B + b) * T_ + t) * H, h, H * sizeof(T));
        if (emit_y) {
          T* yr = y + (p.y_mode == OutputMode::All ? ((m * B + b) * T_ + t) * O : (m * B + b) * O);
          for (int64_t o = 0; o < O; ++o)
            yr[o] = dot_padded(h, wout_p[m]->data + o * hp, hp) + (b_out ? b_out[m * O + o] : T(0));
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

// sum[i][j] += sum over (r, t) of dz[r, t, i] * h[r, t, j] for t < T - 1 (dz_next's last slot
// is zero), plus dz0[r, i] * h0[r, j]: [H x K] x [K x hp] register-blocked products over
// chunks of K (row, step) pairs, transposed and padded into scratch.
template <class T>
void accumulate_outer(int64_t rows, int64_t T_, int64_t H, int64_t hp, const T* dz_next,
                      const T* states, const T* dz0, const T* h0, T* sum) {
  constexpr int64_t KC = 128;
  Buffer<T> a(H * KC), b(KC * hp);  // b's padding lanes stay zero
  std::vector<const T*> init(H);
  for (int64_t i = 0; i < H; ++i) init[i] = sum + i * hp;
  int64_t k = 0;
  const auto flush = [&] {
    if (k) gemm_tile<T>(H, k, a.data, KC, b.data, hp, init.data(), sum, hp, Epilogue::Identity);
    k = 0;
  };
  const auto push = [&](const T* dz, const T* h) {
    for (int64_t i = 0; i < H; ++i) a[i * KC + k] = dz[i];
    std::memcpy(b.data + k * hp, h, H * sizeof(T));
    if (++k == KC) flush();
  };
  for (int64_t r = 0; r < rows; ++r) {
    if (h0) push(dz0 + r * H, h0 + r * H);
    for (int64_t t = 0; t + 1 < T_; ++t) push(dz_next + (r * T_ + t) * H, states + (r * T_ + t) * H);
  }
  flush();
}

template <class T>
void backward_impl(const BackwardParams& p) {
  const int64_t M = p.M, B = p.B, T_ = p.T, H = p.H, I = p.I, O = p.O;
  if (M == 0 || B == 0 || T_ == 0) return;  // callers handle T == 0 without a kernel
  constexpr int N = Simd<T>::N;
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
  T* d_w_ih_t = ids ? reinterpret_cast<T*>(p.d_w_ih_t) : nullptr;
  T* d_w_out = reinterpret_cast<T*>(p.d_w_out);
  T* d_b_out = reinterpret_cast<T*>(p.d_b_out);
  T* d_w_hh = reinterpret_cast<T*>(p.d_w_hh);
  const T* h0 = reinterpret_cast<const T*>(p.h0);
  const bool has_gy = gy && O > 0 && p.gy_mode != OutputMode::None;

  // dz_{t+1} (as a row) times W_hh: W_hh itself is the [K = H] x [hp] operand.
  std::vector<std::unique_ptr<Buffer<T>>> wpad(M), wout_p(M);
  for (int64_t m = 0; m < M; ++m) {
    wpad[m] = std::make_unique<Buffer<T>>(H * hp);
    for (int64_t j = 0; j < H; ++j)
      std::memcpy(wpad[m]->data + j * hp, w_hh + (m * H + j) * H, H * sizeof(T));
    wout_p[m] = std::make_unique<Buffer<T>>(has_gy ? O * hp : 0);
    for (int64_t o = 0; has_gy && o < O; ++o)
      std::memcpy(wout_p[m]->data + o * hp, w_out + (m * O + o) * H, H * sizeof(T));
  }
  std::mutex reduce_mutex;
  const int threads = thread_count(p.num_threads, double(M) * B * T_ * H * H * (d_w_hh ? 4 : 2));
  const int64_t bt = tile_rows(M, B, threads);
  const int64_t tiles = (B + bt - 1) / bt;
  parallel_for(M * tiles, threads, [&](int64_t item) {
    const int64_t m = item / tiles, b0 = (item % tiles) * bt, rows = std::min(bt, B - b0);
    Buffer<T> src_a(bt * H), src_b(bt * H), init(bt * hp), z(bt * hp);
    Buffer<T> w_hh_sum(d_w_hh ? H * hp : 0);
    // This tile's share of the (b, t) sums, added to the outputs once at the end.
    Buffer<T> bias_sum(d_bias ? H : 0), emb_sum(d_w_ih_t ? I * H : 0);
    Buffer<T> wout_sum(d_w_out ? O * H : 0), bout_sum(d_b_out ? O : 0);
    std::vector<const T*> init_rows(bt);
    for (int64_t r = 0; r < bt; ++r) init_rows[r] = init.data + r * hp;
    T* src = src_a.data;  // dz_{t+1}; zero past the end
    T* nxt = src_b.data;
    const T* wm = wpad[m]->data;
    for (int64_t r = 0; r < rows; ++r)
      std::memset(dz_next + ((m * B + b0 + r) * T_ + T_ - 1) * H, 0, H * sizeof(T));
    for (int64_t t = T_ - 1; t >= -1; --t) {
      const bool y_step = has_gy && t >= 0 && (p.gy_mode == OutputMode::All || t == T_ - 1);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t b = b0 + r;
        T* in = init.data + r * hp;
        if (t >= 0 && g_all)
          std::memcpy(in, g_all + ((m * B + b) * T_ + t) * H, H * sizeof(T));
        else
          std::memset(in, 0, H * sizeof(T));
        if (t == T_ - 1 && g_last)
          for (int64_t j = 0; j < H; ++j) in[j] += g_last[(m * B + b) * H + j];
        if (y_step) {
          const T* g = gy + (p.gy_mode == OutputMode::All ? ((m * B + b) * T_ + t) * O : (m * B + b) * O);
          for (int64_t o = 0; o < O; ++o) {
            const vec<T> go = splat(g[o]);
            const T* wo = wout_p[m]->data + o * hp;
            for (int64_t j = 0; j < hp; j += N) store(in + j, load(in + j) + go * load(wo + j));
          }
        }
      }
      gemm_tile<T>(rows, H, src, H, wm, hp, init_rows.data(), z.data, hp, Epilogue::Identity);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t b = b0 + r;
        const T* zr = z.data + r * hp;
        if (t < 0) {  // one more product gives dL/dh0, no activation in front of h0
          std::memcpy(dh0 + (m * B + b) * H, zr, H * sizeof(T));
          continue;
        }
        const T* h = states + ((m * B + b) * T_ + t) * H;
        T* d = t > 0 ? dz_next + ((m * B + b) * T_ + t - 1) * H : dz0 + (m * B + b) * H;
        T* d_keep = nxt + r * H;
        // One loop per activation (a constant argument), so the compiler vectorises it.
        if (p.activation == Activation::Relu)
          for (int64_t j = 0; j < H; ++j) d_keep[j] = zr[j] * activation_grad(Activation::Relu, h[j]);
        else
          for (int64_t j = 0; j < H; ++j) d_keep[j] = zr[j] * activation_grad(Activation::Tanh, h[j]);
        std::memcpy(d, d_keep, H * sizeof(T));
        if (d_bias)
          for (int64_t j = 0; j < H; ++j) bias_sum[j] += d_keep[j];
        if (d_w_ih_t) {
          T* e = emb_sum.data + ids[m * p.ids_stride_m + b * p.ids_stride_b + t * p.ids_stride_t] * H;
          for (int64_t j = 0; j < H; ++j) e[j] += d_keep[j];
        }
        if (y_step) {
          const T* g = gy + (p.gy_mode == OutputMode::All ? ((m * B + b) * T_ + t) * O : (m * B + b) * O);
          for (int64_t o = 0; o < O; ++o) {
            if (d_b_out) bout_sum[o] += g[o];
            if (d_w_out)
              for (int64_t j = 0; j < H; ++j) wout_sum[o * H + j] += g[o] * h[j];
          }
        }
      }
      std::swap(src, nxt);
    }
    if (d_w_hh) accumulate_outer<T>(rows, T_, H, hp, dz_next + (m * B + b0) * T_ * H,
                                    states + (m * B + b0) * T_ * H, dz0 + (m * B + b0) * H,
                                    h0 ? h0 + (m * B + b0) * H : nullptr, w_hh_sum.data);
    std::lock_guard<std::mutex> lock(reduce_mutex);
    const auto add = [](T* dst, const T* part, int64_t n) {
      for (int64_t i = 0; i < n; ++i) dst[i] += part[i];
    };
    if (d_w_hh)
      for (int64_t i = 0; i < H; ++i) add(d_w_hh + (m * H + i) * H, w_hh_sum.data + i * hp, H);
    if (d_bias) add(d_bias + m * H, bias_sum.data, H);
    if (d_w_ih_t) add(d_w_ih_t + m * I * H, emb_sum.data, I * H);
    if (d_w_out) add(d_w_out + m * O * H, wout_sum.data, O * H);
    if (d_b_out) add(d_b_out + m * O, bout_sum.data, O);
  });
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

}  // namespace gf::rnn
