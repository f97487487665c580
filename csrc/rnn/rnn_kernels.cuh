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

struct KernelArgs {
  int B, T, I, H, O, hs;  // hs: row stride of the shared hidden buffers (>= KR, zero padded)
  Activation act;
  bool backward, tokens;
  const float* w;          // recurrent matrix [M, H, H]; this thread's row is w[j*w_row + k*w_col]
  int w_row, w_col;
  // forward
  const int64_t* ids;
  const float* xs;
  int64_t xsm, xsb, xst, xsi;
  const float *w_ih_t, *bias, *h0, *w_out, *b_out;
  OutputMode y_mode;
  float *y, *h_all, *h_last;
  // backward
  const float *states, *g_all, *g_last, *gy;
  OutputMode gy_mode;
  float *dz_next, *dz0, *dh0, *d_bias, *d_w_ih_t, *d_w_out, *d_b_out;
};

__device__ __forceinline__ bool readout_step(const KernelArgs& a, OutputMode mode, int t) {
  return a.O > 0 && t >= 0 && (mode == OutputMode::All || (mode == OutputMode::Last && t == a.T - 1));
}

__device__ __forceinline__ const float* readout_grad_row(const KernelArgs& a, int64_t row, int t) {
  return a.gy + (a.gy_mode == OutputMode::All ? row * a.T + t : row) * a.O;
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
  const float* wt = a.w_ih_t + int64_t(m) * a.I * a.H;
  if (a.tokens) {
    const int64_t id = a.ids[m * a.xsm + b * a.xsb + t * a.xst];
    return u + wt[id * a.H + j];
  }
  const float* x = a.xs + m * a.xsm + b * a.xsb + t * a.xst;
  for (int i = 0; i < a.I; ++i) u += x[i * a.xsi] * wt[int64_t(i) * a.H + j];
  return u;
}

template <int KR, int BT>
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
  const int steps = a.backward ? a.T + 1 : a.T;  // the backward's extra step yields dh0
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
          if (a.d_w_ih_t) {
            const int64_t id = a.ids[m * a.xsm + (b0 + r) * a.xsb + t * a.xst];
            atomicAdd(a.d_w_ih_t + (int64_t(m) * a.I + id) * H + j, d);
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
    float* tmp = cur;
    cur = nxt;
    nxt = tmp;
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

template <int KR, int BT>
void launch(const KernelArgs& a, int M, void* stream) {
  const int nt = (a.H + 31) / 32 * 32;
  const size_t smem = (size_t((a.H > KR ? a.H - KR : 0)) * nt + size_t(2) * BT * a.hs) * sizeof(float);
  auto kernel = recurrence_kernel<KR, BT>;
  GF_ALLOW_SMEM(kernel, smem);
  const dim3 grid(unsigned((a.B + BT - 1) / BT), unsigned(M));
  GF_LAUNCH(kernel, grid, dim3(unsigned(nt)), smem, stream, a);
}

template <int KR>
void launch_tiles(const KernelArgs& a, int M, int tile, void* stream) {
  switch (tile) {
    case 1: return launch<KR, 1>(a, M, stream);
    case 2: return launch<KR, 2>(a, M, stream);
    case 4: return launch<KR, 4>(a, M, stream);
    default: return launch<KR, 8>(a, M, stream);
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
  a.w = reinterpret_cast<const float*>(p.w_hh);
  a.w_row = a.H; a.w_col = 1;
  a.ids = reinterpret_cast<const int64_t*>(p.x);
  a.xs = reinterpret_cast<const float*>(p.x);
  a.xsm = p.x_stride_m; a.xsb = p.x_stride_b; a.xst = p.x_stride_t; a.xsi = p.x_stride_i;
  a.w_ih_t = reinterpret_cast<const float*>(p.w_ih_t);
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
  a.d_w_ih_t = p.ids ? reinterpret_cast<float*>(p.d_w_ih_t) : nullptr;
  a.d_w_out = reinterpret_cast<float*>(p.d_w_out);
  a.d_b_out = reinterpret_cast<float*>(p.d_b_out);
  a.dh0 = reinterpret_cast<float*>(p.dh0);
  run(a, p.M, reinterpret_cast<void*>(p.stream));
}

}  // namespace gf::rnn::GF_KERNEL_NS
