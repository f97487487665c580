// Activation math shared by the CPU, CUDA and emulated kernels.
#pragma once
#include <math.h>
#include <stdint.h>
#include "common.h"
#include "rnn/rnn.h"

namespace gf::rnn {

GF_HOST_DEVICE float tanh_of(float z) { return tanhf(z); }
GF_HOST_DEVICE double tanh_of(double z) { return tanh(z); }

template <class T>
GF_HOST_DEVICE T activate(Activation a, T z) {
  if (a == Activation::Relu) return z > T(0) ? z : T(0);
  return tanh_of(z);
}

// Derivative expressed through the activation's output h, so the backward needs no z.
template <class T>
GF_HOST_DEVICE T activation_grad(Activation a, T h) {
  if (a == Activation::Relu) return h > T(0) ? T(1) : T(0);
  return T(1) - h * h;
}

// Counter-based symbols: the same sequence on every backend and in Python
// (grokfast.automata.validate.random_symbols), at any length without storing it.
GF_HOST_DEVICE uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

GF_HOST_DEVICE int64_t random_symbol(uint64_t seed, int64_t b, int64_t t, int64_t num_symbols) {
  const uint64_t key = (uint64_t(b) << 32) ^ uint64_t(t);
  return int64_t((mix64(key ^ mix64(seed)) >> 11) % uint64_t(num_symbols));
}

}  // namespace gf::rnn
