// Math shared by the CPU, CUDA and emulated pair kernels: the power-of-two scaling, the guard
// band of the float32 GEMM expansion and the float64 recomputation that decides pairs inside it.
//
// Definition. Pair (i, j) is within radius r iff  d2_64(i, j) <= fl64(r * r), where d2_64 is
// sum_k (double(x_ik) - double(x_jk))^2 evaluated in float64 (exact_d2 below; the order of the
// float64 sum and FMA contraction only matter when d2 and r*r agree to ~D * 2^-53 relative,
// far below anything the float32 inputs resolve; test ties are exactly representable).
//
// Fast path. Let m be a centre (any float64 vector, e.g. the column mean) and s = 2^k chosen so
// the largest |x - m| * s is about 1 (scale_for). The kernels keep xt_i = fl32((x_i - m) s),
// nt_i = fl32(|xt_i|^2) (summed in float64) and evaluate in float32
//     t_ij = (nt_i + nt_j) - 2 * dot32(xt_i, xt_j)
// with any summation order / FMA contraction. With u = 2^-24, S = nt_i + nt_j and
// e_ij = s^2 |x_i - x_j|^2 (real arithmetic, the exact scaled squared distance):
//     rounding xt (centring):  |(|xt_i - xt_j|^2 - e_ij)| <= (2u + u^2)(|a_i| + |a_j|)^2 <= 4.1u S
//     norms nt_i, nt_j:        <= u S (+ float64 error)
//     dot32 (Higham, gamma_D): 2 |dot32 - xt_i.xt_j| <= gamma_D S,  gamma_D = D u / (1 - D u)
//     nt_i + nt_j, final sub:  <= u S + 2u S
//     underflow / FTZ:         <= (3D + 10) 2^-126, since scaled coordinates are <= ~1
// so  |t_ij - e_ij| <= (D + 9) u S (1.01) + (3D + 10) 2^-126  <  g_ij = c_D S + 2^-100,
// with c_D = 2 (D + 16) u (a factor ~2 to spare, covering the float32 evaluation of g and of
// t +- g themselves). The bound holds for D <= 10^6; above that every pair is recomputed.
// A pair is certainly within r if fl(t + g) < lo(r) and certainly outside if fl(t - g) > hi(r),
// where lo/hi are (r s)^2 shifted by 8u relative margins (thresholds below): those margins
// absorb fl32(r s), the float32 arithmetic on the thresholds and the float64 evaluation of d2_64
// (relative error <= D 2^-53), so both fast decisions provably agree with the definition.
// Everything else (the guard band, of relative width ~2 c_D S / r^2) is recomputed with
// exact_d2. With bounding radii rho (upper bounds on a point's distance to a group leader), the
// same margins give the group-level tests in group_thresholds().
#pragma once
#include <math.h>
#include <stdint.h>

#include "common.h"

namespace gf::pairs {

constexpr float kUnitRoundoff = 5.9604644775390625e-08f;  // 2^-24
constexpr float kGuardAbs = 7.888609052210118e-31f;        // 2^-100
constexpr float kUp = 1.0f + 8 * kUnitRoundoff;            // exact in float32
constexpr float kDown = 1.0f - 8 * kUnitRoundoff;
constexpr float kHuge = 1e15f;  // scaled radii above this behave as +inf (scaled distances <= ~2)
constexpr int64_t kMaxGuardedDim = 1000000;

// Guard coefficient c_D (see above); +inf beyond the validated range: every pair exact.
GF_HOST_DEVICE float guard_coefficient(int64_t D) {
  if (D > kMaxGuardedDim) return INFINITY;
  return 2.0f * float(D + 16) * kUnitRoundoff;
}

// Power-of-two scale s with max |x - m| * s in [0.5, 1] (up to rounding); 1 for a single point.
GF_HOST_DEVICE double scale_for(double max_norm2) {
  if (!(max_norm2 > 0) || !(max_norm2 < INFINITY)) return 1.0;
  int e = 0;
  frexp(sqrt(max_norm2), &e);
  return ldexp(1.0, -e);
}

// Scaled float32 radius, clamped so that squares stay finite.
GF_HOST_DEVICE float scaled_radius(double r, double scale) {
  const double e = r * scale;
  return e < double(kHuge) ? float(e) : kHuge;
}

// lo/hi thresholds for t +- g (rho = 0): certainly in if fl(t + g) < lo, out if fl(t - g) > hi.
GF_HOST_DEVICE float threshold_lo(float e) {
  const float a = e * kDown;
  return (a * a) * kDown;
}
GF_HOST_DEVICE float threshold_hi(float e) {
  const float a = e * kUp;
  return (a * a) * kUp;
}
// Group-level versions: leaders A, B with bounding radii rho_a + rho_b = rho_sum.
// All member pairs are within r if fl(t + g) < lo, none is if fl(t - g) > hi.
GF_HOST_DEVICE float group_lo(float e, float rho_sum) {
  float b = e * kDown - rho_sum;
  b = b > 0.f ? b : 0.f;
  return (b * b) * kDown;
}
GF_HOST_DEVICE float group_hi(float e, float rho_sum) {
  const float b = (e * kUp + rho_sum) * kUp;
  return (b * b) * kUp;
}

// Upper bound, as a float32 scaled squared distance, that any point j with d2_64 <= bound_d2
// (original units) satisfies fl(t - g) <= it; used to prune nearest-center candidates.
GF_HOST_DEVICE float candidate_bound(double bound_d2, double scale) {
  const double b = bound_d2 * scale * scale * (1.0 + 1.0 / 1048576.0);
  return b < double(kHuge) * double(kHuge) ? float(b) : kHuge * kHuge;
}

// Upper bound of a leader-to-member distance (scaled) from its fl(t + g).
GF_HOST_DEVICE float rho_from_bound(float tg) {
  return tg > 0.f ? float(sqrt(double(tg)) * (1.0 + 1.0 / 1048576.0)) : 0.f;
}

// d2_64 between row i of a and row j of b (both float32, strided), in float64.
GF_HOST_DEVICE double exact_d2(const float* a, int64_t a_sn, int64_t a_sd, int64_t i,
                               const float* b, int64_t b_sn, int64_t b_sd, int64_t j, int64_t D) {
  const float* pa = a + i * a_sn;
  const float* pb = b + j * b_sn;
  double s = 0.0;
  for (int64_t k = 0; k < D; ++k) {
    const double d = double(pa[k * a_sd]) - double(pb[k * b_sd]);
    s = fma(d, d, s);
  }
  return s;
}

}  // namespace gf::pairs
