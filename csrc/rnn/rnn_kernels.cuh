// The GPU recurrence, written once and compiled twice: by nvcc (rnn_cuda.cu) and by the host
// compiler against csrc/emu (rnn_emulated.cpp). The including file defines GF_KERNEL_NS and
// includes csrc/cuda_build.h or csrc/emu_build.h (GF_LAUNCH, GF_ALLOW_SMEM, GF_DYNAMIC_SHARED,
// gf::multiprocessor_count).
//
// One block per (batch tile, model); thread j owns hidden unit j for every row of its tile.
// Row j of the recurrent matrix lives on chip for the whole sequence: its first KR columns in
// registers, the rest (H > 128) in shared memory. Hidden states are double-buffered in shared
// memory, so each step costs a single __syncthreads and no grid-wide barrier.
// The backward recurrence dz_t = (g_t + W^T dz_{t+1}) * act'(h_t) is the same loop with W^T.
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "rnn/rnn.h"
#include "rnn/rnn_common.h"

namespace gf::rnn::GF_KERNEL_NS {

constexpr int kMaxHidden = 256;
constexpr int kMaxRegisterCols = 128;
constexpr int kMaxReadoutRegs = 8;  // readout-gradient partial sums kept in registers
constexpr int kMaxTrackCenters = 2048;  // shared-memory distances of a tile's rows

// TrackParams by value (the kernel cannot read the host struct).
struct TrackArgs {
  bool on = false;
  int S = 0;
  const float* centers = nullptr;
  const int64_t *center_state = nullptr, *machine_next = nullptr, *target_next = nullptr,
                *target_out = nullptr;
  int64_t machine_initial = 0, target_initial = 0;
  int64_t* first_disagreement = nullptr;
  int64_t *agree_steps = nullptr, *correct_steps = nullptr;
  float* max_distance = nullptr;
};

struct KernelArgs {
  int B, T, I, H, O, hs;  // hs: row stride of the shared hidden buffers (>= KR, zero padded)
  Activation act;
  bool backward, tokens, generate;
  uint64_t seed;
  TrackArgs track;
  const float* w;          // recurrent matrix [M, H, H]; this thread's row is w[j*w_row + k*w_col]
  int w_row, w_col;
  // forward
  const int64_t* ids;
  const float* xs;
  int64_t xsm, xsb, xst, xsi;
  const float *w_ih, *bias, *h0, *w_out, *b_out;
  int64_t wih_sh, wih_si;  // W_ih [M, H, I] strides within a model
  OutputMode y_mode;
  float *y, *h_all, *h_last;
  // backward
  const float *states, *g_all, *g_last, *gy;
  OutputMode gy_mode;
  float *dz_next, *dz0, *dh0, *d_bias, *d_w_ih, *d_w_out, *d_b_out;
  int64_t dwih_sh, dwih_si;
};

__device__ __forceinline__ bool readout_step(const KernelArgs& a, OutputMode mode, int t) {
  return a.O > 0 && t >= 0 && (mode == OutputMode::All || (mode == OutputMode::Last && t == a.T - 1));
}

__device__ __forceinline__ const float* readout_grad_row(const KernelArgs& a, int64_t row, int t) {
  return a.gy + (a.gy_mode == OutputMode::All ? row * a.T + t : row) * a.O;
}

__device__ __forceinline__ int64_t token(const KernelArgs& a, int m, int b, int t) {
  if (a.generate) return random_symbol(a.seed, int64_t(m) * a.B + b, t, a.I);
  return a.ids[m * a.xsm + b * a.xsb + t * a.xst];
}

// Term added to W h_{t-1} before the activation (forward) or to W^T dz_{t+1} (backward).
__device__ __forceinline__ float step_input(const KernelArgs& a, int m, int b, int t, int j) {
  if (a.backward) {
    if (t < 0) return 0.f;
    const int64_t row = (int64_t(m) * a.B + b);
    float g = a.g_all ? a.g_all[(row * a.T + t) * a.H + j] : 0.f;
    if (a.g_last && t == a.T - 1) g += a.g_last[row * a.H + j];
    if (a.gy && readout_step(a, a.gy_mode, t)) {
      const float* gy = readout_grad_row(a, row, t);
      for (int o = 0; o < a.O; ++o) g += gy[o] * a.w_out[(int64_t(m) * a.O + o) * a.H + j];
    }
    return g;
  }
  float u = a.bias ? a.bias[int64_t(m) * a.H + j] : 0.f;
  const float* wt = a.w_ih + int64_t(m) * a.I * a.H + j * a.wih_sh;
  if (a.tokens) {
    return u + wt[token(a, m, b, t) * a.wih_si];
  }
  const float* x = a.xs + m * a.xsm + b * a.xsb + t * a.xst;
  for (int i = 0; i < a.I; ++i) u += x[i * a.xsi] * wt[i * a.wih_si];
  return u;
}

template <int KR, int BT, bool TRACK>
__global__ void __launch_bounds__(kMaxHidden, 1) recurrence_kernel(KernelArgs a) {
  GF_DYNAMIC_SHARED(float, smem);
  const int j = threadIdx.x, nt = blockDim.x, m = blockIdx.y;
  const int b0 = blockIdx.x * BT;
  const int rows = a.B - b0 < BT ? a.B - b0 : BT;
  const int H = a.H, hs = a.hs;
  const bool own = j < H;
  const int smem_cols = H > KR ? H - KR : 0;
  float* w_smem = smem;                   // [H - KR][nt]: conflict-free, thread j reads column j
  float* hbuf = smem + smem_cols * nt;    // [2][BT][hs]
  // Tracking: per row [q_machine, q_target, first, agree, correct, max_dist bits] (shared, not
  // registers: the untracked forward must not pay for them), then [BT][S + O] scratch.
  int64_t* tstate = reinterpret_cast<int64_t*>(hbuf + 2 * BT * hs);  // 8-byte aligned: even offset
  float* tbuf = reinterpret_cast<float*>(tstate + 6 * BT);
  const float* w = a.w + int64_t(m) * H * H;

  float wr[KR];
#pragma unroll
  for (int k = 0; k < KR; ++k)
    wr[k] = (own && k < H) ? w[int64_t(j) * a.w_row + int64_t(k) * a.w_col] : 0.f;
  for (int k = KR; k < H; ++k)
    w_smem[(k - KR) * nt + j] = own ? w[int64_t(j) * a.w_row + int64_t(k) * a.w_col] : 0.f;
  for (int i = j; i < 2 * BT * hs; i += nt) hbuf[i] = 0.f;
  __syncthreads();
  if (!a.backward && a.h0 && own)
    for (int r = 0; r < rows; ++r) hbuf[r * hs + j] = a.h0[(int64_t(m) * a.B + b0 + r) * H + j];
  __syncthreads();

  if (a.backward && own)
    for (int r = 0; r < rows; ++r)
      a.dz_next[((int64_t(m) * a.B + b0 + r) * a.T + a.T - 1) * H + j] = 0.f;
  // Backward: this thread's share of the (b, t) sums, flushed with atomics at the end.
  float bias_sum = 0.f, wout_sum[kMaxReadoutRegs], bout_sum[kMaxReadoutRegs];
#pragma unroll
  for (int o = 0; o < kMaxReadoutRegs; ++o) wout_sum[o] = bout_sum[o] = 0.f;
  float* cur = hbuf;
  float* nxt = hbuf + BT * hs;
  if (TRACK && j < rows) {
    int64_t* ts = tstate + 6 * j;
    ts[0] = a.track.machine_initial;
    ts[1] = a.track.target_initial;
    ts[2] = -1;
    ts[3] = ts[4] = ts[5] = 0;
  }
  const int steps = a.backward && a.dh0 ? a.T + 1 : a.T;  // the backward's extra step: dh0
  for (int s = 0; s < steps; ++s) {
    const int t = a.backward ? a.T - 1 - s : s;
    // CH independent partial sums per row: a step is one dependent FMA chain, so with few
    // rows the chain's latency, not throughput, sets the time per step.
    constexpr int CH = BT >= 4 ? 1 : 4 / BT;
    float part[BT][CH];
#pragma unroll
    for (int r = 0; r < BT; ++r)
#pragma unroll
      for (int c = 0; c < CH; ++c)
        part[r][c] = (c == 0 && own && r < rows) ? step_input(a, m, b0 + r, t, j) : 0.f;
#pragma unroll
    for (int k = 0; k < KR; ++k) {
      const float wk = wr[k];
#pragma unroll
      for (int r = 0; r < BT; ++r) part[r][k % CH] += wk * cur[r * hs + k];
    }
    for (int k = KR; k < H; ++k) {
      const float wk = w_smem[(k - KR) * nt + j];
#pragma unroll
      for (int r = 0; r < BT; ++r) part[r][0] += wk * cur[r * hs + k];
    }
    float acc[BT];
#pragma unroll
    for (int r = 0; r < BT; ++r) {
      acc[r] = part[r][0];
#pragma unroll
      for (int c = 1; c < CH; ++c) acc[r] += part[r][c];
    }
    if (own) {
#pragma unroll
      for (int r = 0; r < BT; ++r) {  // static bound: acc stays in registers
        if (r >= rows) break;
        const int64_t row = int64_t(m) * a.B + b0 + r;
        const int64_t at = (row * a.T + t) * H + j;
        if (!a.backward) {
          const float h = activate(a.act, acc[r]);
          nxt[r * hs + j] = h;
          if (a.h_all) a.h_all[at] = h;
        } else if (t >= 0) {
          const float h = a.states[at];
          const float d = acc[r] * activation_grad(a.act, h);
          nxt[r * hs + j] = d;
          if (t > 0)
            a.dz_next[at - H] = d;
          else
            a.dz0[row * H + j] = d;
          bias_sum += d;
          if (a.d_w_ih) {
            const int64_t id = a.ids[m * a.xsm + (b0 + r) * a.xsb + t * a.xst];
            atomicAdd(a.d_w_ih + int64_t(m) * a.I * H + j * a.dwih_sh + id * a.dwih_si, d);
          }
          if (a.gy && readout_step(a, a.gy_mode, t)) {
            const float* gy = readout_grad_row(a, row, t);
#pragma unroll
            for (int o = 0; o < kMaxReadoutRegs; ++o) {  // static indices: registers
              if (o < a.O) {
                wout_sum[o] += gy[o] * h;
                if (j == 0) bout_sum[o] += gy[o];
              }
            }
            for (int o = kMaxReadoutRegs; o < a.O; ++o) {
              if (a.d_w_out) atomicAdd(a.d_w_out + (int64_t(m) * a.O + o) * H + j, gy[o] * h);
              if (a.d_b_out && j == 0) atomicAdd(a.d_b_out + int64_t(m) * a.O + o, gy[o]);
            }
          }
        } else {
          a.dh0[row * H + j] = acc[r];
        }
      }
    }
    __syncthreads();
    if (!a.backward && a.O > 0 &&
        (a.y_mode == OutputMode::All || (a.y_mode == OutputMode::Last && t == a.T - 1))) {
      for (int p = j; p < rows * a.O; p += nt) {
        const int r = p / a.O, o = p % a.O;
        const float* wo = a.w_out + (int64_t(m) * a.O + o) * H;
        const float* hr = nxt + r * hs;
        float s0 = a.b_out ? a.b_out[int64_t(m) * a.O + o] : 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
        int k = 0;
        for (; k + 4 <= H; k += 4) {  // four chains, as above
          s0 += wo[k] * hr[k];
          s1 += wo[k + 1] * hr[k + 1];
          s2 += wo[k + 2] * hr[k + 2];
          s3 += wo[k + 3] * hr[k + 3];
        }
        for (; k < H; ++k) s0 += wo[k] * hr[k];
        const float sum = (s0 + s1) + (s2 + s3);
        const int64_t row = int64_t(m) * a.B + b0 + r;
        a.y[(a.y_mode == OutputMode::All ? row * a.T + t : row) * a.O + o] = sum;
      }
    }
    if (TRACK) {
      const TrackArgs& tr = a.track;
      const int S = tr.S, width = S + a.O;
      for (int q = j; q < rows * width; q += nt) {
        const int r = q / width, k = q % width;
        const float* hr = nxt + r * hs;
        float s0 = 0.f, s1 = 0.f;
        if (k < S) {
          const float* c = tr.centers + int64_t(k) * H;
          int i = 0;
          for (; i + 2 <= H; i += 2) {
            const float d0 = hr[i] - c[i], d1 = hr[i + 1] - c[i + 1];
            s0 += d0 * d0;
            s1 += d1 * d1;
          }
          if (i < H) s0 += (hr[i] - c[i]) * (hr[i] - c[i]);
        } else {
          const int o = k - S;
          const float* wo = a.w_out + (int64_t(m) * a.O + o) * H;
          s0 = a.b_out ? a.b_out[int64_t(m) * a.O + o] : 0.f;
          for (int i = 0; i < H; ++i) s1 += wo[i] * hr[i];
        }
        tbuf[r * width + k] = s0 + s1;
      }
      __syncthreads();
      if (j < rows) {
        int64_t* ts = tstate + 6 * j;
        int64_t &q_machine = ts[0], &q_target = ts[1], &first = ts[2], &agree = ts[3],
                &correct = ts[4];
        float& max_dist = *reinterpret_cast<float*>(ts + 5);
        const float* d = tbuf + j * width;
        int nearest = -1;
        float best = INFINITY;
        for (int k = 0; k < S; ++k)
          if (d[k] < best) best = d[k], nearest = k;
        const int64_t symbol = token(a, m, b0 + j, t);
        q_machine = q_machine >= 0 ? tr.machine_next[q_machine * a.I + symbol] : -1;
        q_target = tr.target_next[q_target * a.I + symbol];
        if (q_machine >= 0 && nearest >= 0 && tr.center_state[nearest] == q_machine)
          ++agree;
        else if (first < 0)
          first = t;
        if (a.O > 0) {
          int arg = 0;
          float top = -INFINITY;
          for (int o = 0; o < a.O; ++o)
            if (d[S + o] > top) top = d[S + o], arg = o;
          if (arg == tr.target_out[q_target]) ++correct;
        }
        const float dist = nearest >= 0 ? sqrtf(best) : INFINITY;
        max_dist = dist > max_dist ? dist : max_dist;
      }
    }
    float* tmp = cur;
    cur = nxt;
    nxt = tmp;
  }
  if (TRACK && j < rows) {
    const int64_t row = int64_t(m) * a.B + b0 + j;
    const int64_t* ts = tstate + 6 * j;
    a.track.first_disagreement[row] = ts[2];
    a.track.agree_steps[row] = ts[3];
    a.track.correct_steps[row] = ts[4];
    a.track.max_distance[row] = *reinterpret_cast<const float*>(ts + 5);
  }
  if (!a.backward && a.h_last && own)
    for (int r = 0; r < rows; ++r) a.h_last[(int64_t(m) * a.B + b0 + r) * H + j] = cur[r * hs + j];
  if (a.backward && own) {
    if (a.d_bias) atomicAdd(a.d_bias + int64_t(m) * H + j, bias_sum);
#pragma unroll
    for (int o = 0; o < kMaxReadoutRegs; ++o) {
      if (o >= a.O) break;
      if (a.d_w_out) atomicAdd(a.d_w_out + (int64_t(m) * a.O + o) * H + j, wout_sum[o]);
      if (a.d_b_out && j == 0) atomicAdd(a.d_b_out + int64_t(m) * a.O + o, bout_sum[o]);
    }
  }
}

template <int KR, int BT, bool TRACK>
void launch(const KernelArgs& a, int M, void* stream) {
  const int nt = (a.H + 31) / 32 * 32;
  const size_t track = a.track.on ? size_t(BT) * (12 + a.track.S + a.O) : 0;  // 6 int64 + scratch
  const size_t smem = (size_t((a.H > KR ? a.H - KR : 0)) * nt + size_t(2) * BT * a.hs + track) * sizeof(float);
  auto kernel = recurrence_kernel<KR, BT, TRACK>;
  GF_ALLOW_SMEM(kernel, smem);
  const dim3 grid(unsigned((a.B + BT - 1) / BT), unsigned(M));
  GF_LAUNCH(kernel, grid, dim3(unsigned(nt)), smem, stream, a);
}

template <int KR>
void launch_tiles(const KernelArgs& a, int M, int tile, void* stream) {
  // Tracking is a separate instantiation (its state would cost the plain forward registers),
  // compiled for two tile sizes only.
  if (a.track.on) return tile >= 4 ? launch<KR, 4, true>(a, M, stream) : launch<KR, 1, true>(a, M, stream);
  switch (tile) {
    case 1: return launch<KR, 1, false>(a, M, stream);
    case 2: return launch<KR, 2, false>(a, M, stream);
    case 4: return launch<KR, 4, false>(a, M, stream);
    default: return launch<KR, 8, false>(a, M, stream);
  }
}

// Rows per block: the largest tile that still gives every multiprocessor a block;
// GROKFAST_CUDA_TILE_ROWS (1, 2, 4 or 8) overrides it, so tests can reach every variant.
inline int choose_tile(int64_t B, int64_t M) {
  if (const char* env = std::getenv("GROKFAST_CUDA_TILE_ROWS")) {
    const int t = std::atoi(env);
    if (t == 1 || t == 2 || t == 4 || t == 8) return t;
    throw std::invalid_argument("GROKFAST_CUDA_TILE_ROWS must be 1, 2, 4 or 8, got '" +
                                std::string(env) + "'");
  }
  const int64_t sms = multiprocessor_count();
  for (int t : {8, 4, 2})
    if ((B + t - 1) / t * M >= sms) return t;
  return 1;
}

inline void check_sizes(int64_t M, int64_t B, int64_t T, int64_t H) {
  if (H < 1 || H > kMaxHidden)
    throw std::invalid_argument("hidden size " + std::to_string(H) +
                                " is unsupported by the GPU kernel (1.." +
                                std::to_string(kMaxHidden) + ")");
  if (M > 65535) throw std::invalid_argument("model dimension M must be at most 65535 on GPU backends");
  if (B > (int64_t(1) << 30) || T > (int64_t(1) << 30))
    throw std::invalid_argument("batch and sequence length must be below 2^30 on GPU backends");
}

inline void run(const KernelArgs& a, int64_t M, void* stream) {
  if (M == 0 || a.B == 0 || (a.T == 0 && !a.backward)) return;
  const int tile = choose_tile(a.B, M);
  if (a.H <= 16) return launch_tiles<16>(a, int(M), tile, stream);
  if (a.H <= 32) return launch_tiles<32>(a, int(M), tile, stream);
  if (a.H <= 64) return launch_tiles<64>(a, int(M), tile, stream);
  return launch_tiles<kMaxRegisterCols>(a, int(M), tile, stream);
}

inline int row_stride(int H) {
  const int kr = H <= 16 ? 16 : H <= 32 ? 32 : H <= 64 ? 64 : kMaxRegisterCols;
  return H > kr ? H : kr;
}

inline void forward(const ForwardParams& p) {
  if (p.dtype != DType::Float32) throw std::invalid_argument("GPU kernels support float32 only");
  check_sizes(p.M, p.B, p.T, p.H);
  KernelArgs a{};
  a.B = int(p.B); a.T = int(p.T); a.I = int(p.I); a.H = int(p.H); a.O = int(p.O);
  a.hs = row_stride(a.H);
  a.act = p.activation;
  a.backward = false;
  a.tokens = p.tokens;
  a.generate = p.generate_tokens;
  a.seed = p.seed;
  if (const TrackParams* tp = p.track) {
    if (tp->S < 1 || tp->S > kMaxTrackCenters)
      throw std::invalid_argument("tracking needs 1.." + std::to_string(kMaxTrackCenters) +
                                  " centers on GPU backends, got " + std::to_string(tp->S));
    TrackArgs& t = a.track;
    t.on = true;
    t.S = int(tp->S);
    t.centers = reinterpret_cast<const float*>(tp->centers);
    t.center_state = reinterpret_cast<const int64_t*>(tp->center_state);
    t.machine_next = reinterpret_cast<const int64_t*>(tp->machine_next);
    t.target_next = reinterpret_cast<const int64_t*>(tp->target_next);
    t.target_out = reinterpret_cast<const int64_t*>(tp->target_out);
    t.machine_initial = tp->machine_initial;
    t.target_initial = tp->target_initial;
    t.first_disagreement = reinterpret_cast<int64_t*>(tp->first_disagreement);
    t.agree_steps = reinterpret_cast<int64_t*>(tp->agree_steps);
    t.correct_steps = reinterpret_cast<int64_t*>(tp->correct_steps);
    t.max_distance = reinterpret_cast<float*>(tp->max_distance);
  }
  a.w = reinterpret_cast<const float*>(p.w_hh);
  a.w_row = a.H; a.w_col = 1;
  a.ids = reinterpret_cast<const int64_t*>(p.x);
  a.xs = reinterpret_cast<const float*>(p.x);
  a.xsm = p.x_stride_m; a.xsb = p.x_stride_b; a.xst = p.x_stride_t; a.xsi = p.x_stride_i;
  a.w_ih = reinterpret_cast<const float*>(p.w_ih);
  a.wih_sh = p.w_ih_stride_h; a.wih_si = p.w_ih_stride_i;
  a.bias = reinterpret_cast<const float*>(p.bias);
  a.h0 = reinterpret_cast<const float*>(p.h0);
  a.w_out = reinterpret_cast<const float*>(p.w_out);
  a.b_out = reinterpret_cast<const float*>(p.b_out);
  a.y_mode = p.O > 0 ? p.y_mode : OutputMode::None;
  a.y = reinterpret_cast<float*>(p.y);
  a.h_all = reinterpret_cast<float*>(p.h_all);
  a.h_last = reinterpret_cast<float*>(p.h_last);
  run(a, p.M, reinterpret_cast<void*>(p.stream));
}

inline void backward(const BackwardParams& p) {
  if (p.dtype != DType::Float32) throw std::invalid_argument("GPU kernels support float32 only");
  check_sizes(p.M, p.B, p.T, p.H);
  KernelArgs a{};
  a.B = int(p.B); a.T = int(p.T); a.H = int(p.H); a.I = int(p.I); a.O = int(p.O);
  a.hs = row_stride(a.H);
  a.act = p.activation;
  a.backward = true;
  a.w = reinterpret_cast<const float*>(p.w_hh);
  a.w_row = 1; a.w_col = a.H;  // thread k owns column k of W_hh
  a.states = reinterpret_cast<const float*>(p.states);
  a.g_all = reinterpret_cast<const float*>(p.g_all);
  a.g_last = reinterpret_cast<const float*>(p.g_last);
  a.dz_next = reinterpret_cast<float*>(p.dz_next);
  a.dz0 = reinterpret_cast<float*>(p.dz0);
  a.gy = reinterpret_cast<const float*>(p.gy);
  a.gy_mode = p.gy != 0 ? p.gy_mode : OutputMode::None;
  a.w_out = reinterpret_cast<const float*>(p.w_out);
  a.ids = reinterpret_cast<const int64_t*>(p.ids);
  a.xsm = p.ids_stride_m; a.xsb = p.ids_stride_b; a.xst = p.ids_stride_t;
  a.d_bias = reinterpret_cast<float*>(p.d_bias);
  a.d_w_ih = p.ids ? reinterpret_cast<float*>(p.d_w_ih) : nullptr;
  a.dwih_sh = p.d_w_ih_stride_h; a.dwih_si = p.d_w_ih_stride_i;
  a.d_w_out = reinterpret_cast<float*>(p.d_w_out);
  a.d_b_out = reinterpret_cast<float*>(p.d_b_out);
  a.dh0 = reinterpret_cast<float*>(p.dh0);
  run(a, p.M, reinterpret_cast<void*>(p.stream));
}

}  // namespace gf::rnn::GF_KERNEL_NS
