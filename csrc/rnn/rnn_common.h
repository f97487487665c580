// Activation math shared by the CPU, CUDA and emulated kernels.
#pragma once
#include <math.h>
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

}  // namespace gf::rnn
