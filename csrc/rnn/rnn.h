// Fused Elman recurrence h_t = act(W_hh h_{t-1} + W_ih x_t + b), torch-free API.
// Every tensor has a leading model dimension M (independent RNNs) and is contiguous unless a
// stride is given. Sizes and strides are in elements.
#pragma once
#include <cstdint>
#include "common.h"

namespace gf::rnn {

enum class Activation : int { Tanh = 0, Relu = 1 };
enum class OutputMode : int { None = 0, Last = 1, All = 2 };

// Checking an extracted automaton alongside the forward (one model, M == 1): at every step the
// hidden state is snapped to its nearest center (ties: lowest index), whose state in the tracked
// machine is compared with the state that machine reaches on its own from machine_initial; the
// readout's argmax (ties: lowest) is compared with the target machine's output. Per-sequence
// results only: O(B * H) memory at any length.
struct TrackParams {
  int64_t S = 0;                // centers
  ptr_t centers = 0;            // [S, H], the RNN's dtype
  ptr_t center_state = 0;       // int64 [S]: tracked-machine state of each center, -1 none
  int64_t K = 0;                // tracked machine: states, int64 [K, I] transitions (-1 undefined)
  ptr_t machine_next = 0;
  int64_t machine_initial = 0;
  int64_t Q = 0;                // target machine: int64 [Q, I] transitions, int64 [Q] outputs
  ptr_t target_next = 0;
  ptr_t target_out = 0;
  int64_t target_initial = 0;
  ptr_t first_disagreement = 0; // int64 [B]: first step whose center disagrees, -1 none
  ptr_t agree_steps = 0;        // int64 [B]
  ptr_t correct_steps = 0;      // int64 [B]: readout argmax == target output (needs O > 0)
  ptr_t max_distance = 0;       // float32 [B]: largest distance to the nearest center
};

struct ForwardParams {
  int64_t M = 1, B = 0, T = 0, I = 0, H = 0, O = 0;
  bool tokens = false;  // x holds int64 ids in [0, I): W_ih is read as an embedding table
  Activation activation = Activation::Tanh;
  DType dtype = DType::Float32;
  // x: [M, B, T] ids or [M, B, T, I] values, strided.
  ptr_t x = 0;
  int64_t x_stride_m = 0, x_stride_b = 0, x_stride_t = 0, x_stride_i = 0;
  // W_ih [M, H, I]: element (m, j, i) at w_ih[m * H * I + j * w_ih_stride_h + i * w_ih_stride_i]
  // (torch's layout: strides (I, 1); the GPU kernels read coalesced from a transposed copy).
  ptr_t w_ih = 0;
  int64_t w_ih_stride_h = 0, w_ih_stride_i = 0;
  ptr_t w_hh = 0;    // [M, H, H]
  ptr_t bias = 0;    // [M, H] or 0
  ptr_t h0 = 0;      // [M, B, H] or 0 (zeros)
  ptr_t w_out = 0;   // [M, O, H] or 0 when O == 0
  ptr_t b_out = 0;   // [M, O] or 0
  OutputMode y_mode = OutputMode::None;
  ptr_t y = 0;       // [M, B, T, O] (All) or [M, B, O] (Last)
  ptr_t h_all = 0;   // [M, B, T, H] or 0
  ptr_t h_last = 0;  // [M, B, H] or 0
  ptr_t stream = 0;  // cudaStream_t for the CUDA backend
  int num_threads = 0;  // CPU: 0 = all hardware threads
  // Token ids drawn by random_symbol(seed, b, t) (rnn_common.h) instead of read from x.
  bool generate_tokens = false;
  uint64_t seed = 0;
  const TrackParams* track = nullptr;
};

// Backward of the recurrence only (the sequential part of BPTT):
//   dz_t = (g_t + W_hh^T dz_{t+1}) * act'(h_t),   dh0 = W_hh^T dz_0.
// Weight gradients are then plain GEMMs over dz, done by the caller. dz is stored shifted by one
// step (slot t holds dz_{t+1}, slot T-1 is zero) so that dW_hh = sum_t dz_{t+1} h_t^T + dz_0 h0^T
// is one product of two contiguous [B*T, H] matrices.
// The same pass also accumulates the gradients that are sums over (b, t): bias, token embedding
// rows, readout weight and bias; outputs given as 0 are skipped. The CPU backend overwrites
// these sums; the GPU backends add into them (atomics), so they must be zeroed there.
struct BackwardParams {
  int64_t M = 1, B = 0, T = 0, H = 0, I = 0, O = 0;
  Activation activation = Activation::Tanh;
  DType dtype = DType::Float32;
  ptr_t states = 0;  // [M, B, T, H]: h_1..h_T from the forward
  ptr_t w_hh = 0;    // [M, H, H]
  ptr_t g_all = 0;   // [M, B, T, H] or 0: dL/dh_t arriving from outside the recurrence
  ptr_t g_last = 0;  // [M, B, H] or 0: added to g at t = T-1
  // Readout gradient dL/dy: [M, B, T, O] (All) or [M, B, O] (Last); adds W_out^T gy_t to g_t.
  OutputMode gy_mode = OutputMode::None;
  ptr_t gy = 0;
  ptr_t w_out = 0;  // [M, O, H]
  // Token ids [M, B, T] (strided) for the embedding gradient; 0 for dense inputs.
  ptr_t ids = 0;
  int64_t ids_stride_m = 0, ids_stride_b = 0, ids_stride_t = 0;
  ptr_t d_bias = 0;    // [M, H] += sum dz_t
  // dW_ih [M, H, I] (strided within a model like w_ih): column ids_t += dz_t
  ptr_t d_w_ih = 0;
  int64_t d_w_ih_stride_h = 0, d_w_ih_stride_i = 0;
  ptr_t d_w_out = 0;   // [M, O, H] += gy_t h_t^T
  ptr_t d_b_out = 0;   // [M, O] += gy_t
  ptr_t dz_next = 0;  // [M, B, T, H] out: dz_{t+1} at slot t, zeros at T-1
  ptr_t dz0 = 0;      // [M, B, H] out: dz_0
  ptr_t dh0 = 0;      // [M, B, H] out
  // CPU only: [M, H, H] += sum_t dz_{t+1} h_t^T (+ dz_0 h0^T with h0 [M, B, H]), inside the
  // pass, so the training step runs no parallel torch op (whose idle OpenMP workers would
  // spin against this pool). 0: the caller does the GEMM. With token ids and no h0 it reads one
  // state row per token prefix (rows sharing a prefix have equal states from a zero start), so
  // states must be the forward's.
  ptr_t d_w_hh = 0;
  ptr_t h0 = 0;
  ptr_t stream = 0;
  int num_threads = 0;
};

void forward_cpu(const ForwardParams& p);
void backward_cpu(const BackwardParams& p);

// Same kernel source as CUDA, run on host threads (see csrc/emu). float32 only.
void forward_emulated(const ForwardParams& p);
void backward_emulated(const BackwardParams& p);
int64_t max_hidden_gpu_kernel();

#ifdef GROKFAST_WITH_CUDA
void forward_cuda(const ForwardParams& p);
void backward_cuda(const BackwardParams& p);
#endif

}  // namespace gf::rnn
