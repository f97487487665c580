// Standalone self-test of the CPU kernels (csrc/rnn, csrc/pairs) through their public entry
// points, against plain double-precision references written here, for every compiled variant
// this CPU can run. No torch, no Python: it also runs cross-compiled under qemu-user.
// Build and run from the repo root:
//   g++ -std=c++20 -O2 -pthread -ffp-contract=fast -Icsrc csrc/cpu_selftest.cpp csrc/cpu_isa.cpp
//       csrc/parallel.cpp csrc/rnn/rnn_cpu.cpp csrc/pairs/pairs_cpu.cpp -o /tmp/cpu_selftest
//   /tmp/cpu_selftest
// Compiled this way (no CMake variant list) it holds one variant, the one the flags select
// (csrc/simd.h): baseline on plain x86-64, avx2 with -march=x86-64-v3, avx512 with
// -march=x86-64-v4, neon with aarch64-linux-gnu-g++ (add -static to run it under qemu-aarch64).
// Exit status 0 when every case of every variant passes.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cpu_isa.h"
#include "pairs/pairs.h"
#include "rnn/rnn.h"
#include "simd.h"  // GF_CPU_VARIANT_NAME: the variant these flags build

namespace {

using gf::ptr_t;
using gf::rnn::Activation;
using gf::rnn::OutputMode;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string format(const char* fmt, ...) {
  char buf[512];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, args);
  va_end(args);
  return buf;
}

template <class P>
ptr_t ptr_of(P* p) {
  return reinterpret_cast<ptr_t>(p);
}

// splitmix64: the same problems on every platform and compiler.
struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed) {}
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform(double lo = -1, double hi = 1) { return lo + (hi - lo) * double(next() >> 11) * 0x1p-53; }
  int64_t below(int64_t n) { return int64_t(next() % uint64_t(n)); }
  bool coin() { return next() >> 63; }
  template <class V>
  auto pick(const V& v) {
    return v[size_t(below(int64_t(v.size())))];
  }
};

// ---------------------------------------------------------------------------------------------
// Reporting: a group runs cases; a case collects its mismatches and fails when it has any.

struct Check {
  std::string where;
  int errors = 0;
  std::string messages;
  void fail(const std::string& what) {
    if (errors++ < 4) messages += "\n         " + where + ": " + what;
  }
  void expect(bool ok, const std::string& what) {
    if (!ok) fail(what);
  }
};

struct Group {
  int cases = 0, failed = 0;
  std::string messages;
  void run(const std::string& where, const std::function<void(Check&)>& body) {
    Check c;
    c.where = where;
    try {
      body(c);
    } catch (const std::exception& e) {
      c.fail(std::string("exception: ") + e.what());
    }
    ++cases;
    if (c.errors && ++failed <= 3) messages += c.messages;
  }
};

// An output array preset to a poison value (an element the kernel forgets keeps it) between
// guard elements (a write out of bounds changes them).
template <class E>
struct Out {
  static constexpr size_t kGuard = 8;
  static E guard() { return E(1234567); }
  std::vector<E> v;
  size_t n;
  Out(size_t n_, E poison) : v(n_ + 2 * kGuard, guard()), n(n_) {
    std::fill(v.begin() + kGuard, v.begin() + kGuard + n, poison);
  }
  E* data() { return v.data() + kGuard; }
  const E* data() const { return v.data() + kGuard; }
  ptr_t ptr() { return ptr_of(data()); }
  bool guards_intact() const {
    const E g = guard();
    for (size_t i = 0; i < kGuard; ++i)
      if (std::memcmp(&v[i], &g, sizeof g) || std::memcmp(&v[kGuard + n + i], &g, sizeof g)) return false;
    return true;
  }
};

// got ~ want within rtol of the array's magnitude (and of each element's): the float32
// kernels round every step, so an element near zero only has the array's absolute accuracy.
template <class E>
void expect_close(Check& c, const char* what, const E* got, const std::vector<double>& want, double rtol) {
  double mag = 0;
  for (double w : want) mag = std::max(mag, std::abs(w));
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < want.size(); ++i) {
    const double err = std::abs(double(got[i]) - want[i]);
    if (!(err <= rtol * (mag + std::abs(want[i])))) {  // NaN fails
      if (first < 0) first = int64_t(i);
      ++bad;
    }
  }
  if (bad)
    c.fail(format("%s: %lld of %zu elements off (first [%lld]: got %.10g, want %.10g; magnitude %.3g, rtol %.1g)",
                  what, (long long)bad, want.size(), (long long)first, double(got[first]), want[first], mag, rtol));
}

template <class E>
void expect_guards(Check& c, const char* what, const Out<E>& o) {
  c.expect(o.guards_intact(), format("%s: written out of bounds", what));
}

// ---------------------------------------------------------------------------------------------
// RNN problems

template <class T>
constexpr const char* dtype_name() {
  return sizeof(T) == 4 ? "float32" : "float64";
}
template <class T>
constexpr gf::DType dtype_of() {
  return sizeof(T) == 4 ? gf::DType::Float32 : gf::DType::Float64;
}
template <class T>
constexpr double rtol_of() {
  return sizeof(T) == 4 ? 1e-4 : 1e-10;
}

struct RnnCase {
  int64_t M = 1, B = 1, T = 1, I = 1, H = 1, O = 0;
  bool tokens = true, relu = false, with_h0 = false, with_bias = true, with_b_out = true;
  OutputMode y_mode = OutputMode::None;
  bool want_all = true, want_last = true;
  bool w_ih_transposed = false;  // [I, H] storage (strides 1, H) instead of torch's [H, I]
  int x_layout = 0;              // see x_strides
  int threads = 1;
  std::string describe() const {
    static const char* layouts[] = {"contiguous", "every-other", "time-major"};
    return format("M=%lld B=%lld T=%lld I=%lld H=%lld O=%lld %s %s%s%s%s y=%s%s%s w_ih=%s x=%s threads=%d",
                  (long long)M, (long long)B, (long long)T, (long long)I, (long long)H, (long long)O,
                  tokens ? "tokens" : "dense", relu ? "relu" : "tanh", with_h0 ? " h0" : "",
                  with_bias ? " bias" : "", O && with_b_out ? " b_out" : "",
                  y_mode == OutputMode::All ? "all" : y_mode == OutputMode::Last ? "last" : "none",
                  want_all ? " h_all" : "", want_last ? " h_last" : "", w_ih_transposed ? "[I,H]" : "[H,I]",
                  layouts[x_layout], threads);
  }
};

// The problem's values, already rounded to the kernel's dtype, held as doubles.
struct RnnData {
  std::vector<int64_t> ids;  // [M, B, T]
  std::vector<double> x;     // [M, B, T, I] (dense input)
  std::vector<double> w_ih, w_hh, bias, h0, w_out, b_out;  // [M,H,I] [M,H,H] [M,H] [M,B,H] [M,O,H] [M,O]
};

template <class T>
std::vector<double> random_values(Rng& rng, size_t n, double scale) {
  std::vector<double> v(n);
  for (double& e : v) e = double(T(scale * rng.uniform()));
  return v;
}

template <class T>
RnnData make_rnn_data(const RnnCase& c, Rng& rng) {
  RnnData d;
  const size_t M = c.M, B = c.B, T_ = c.T, I = c.I, H = c.H, O = c.O;
  if (c.tokens) {
    d.ids.resize(M * B * T_);
    for (int64_t& id : d.ids) id = rng.below(c.I);
  } else {
    d.x = random_values<T>(rng, M * B * T_ * I, 1.0);
  }
  d.w_ih = random_values<T>(rng, M * H * I, 1.0);
  d.w_hh = random_values<T>(rng, M * H * H, 1.2 / std::sqrt(double(H)));  // contracting
  if (c.with_bias) d.bias = random_values<T>(rng, M * H, 0.5);
  if (c.with_h0) d.h0 = random_values<T>(rng, M * B * H, 0.8);
  d.w_out = random_values<T>(rng, M * O * H, 1.0 / std::sqrt(double(H)));
  if (c.with_b_out) d.b_out = random_values<T>(rng, M * O, 0.3);
  return d;
}

double activate(bool relu, double z) { return relu ? std::max(z, 0.0) : std::tanh(z); }

// h_t = act(W_hh h_{t-1} + W_ih x_t + b), h_{-1} = h0 (zeros without): [M, B, T, H].
std::vector<double> reference_states(const RnnCase& c, const RnnData& d) {
  const int64_t M = c.M, B = c.B, T_ = c.T, I = c.I, H = c.H;
  std::vector<double> states(M * B * T_ * H);
  std::vector<double> h(H), next(H);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < H; ++j) h[j] = d.h0.empty() ? 0.0 : d.h0[(m * B + b) * H + j];
      for (int64_t t = 0; t < T_; ++t) {
        for (int64_t j = 0; j < H; ++j) {
          double z = d.bias.empty() ? 0.0 : d.bias[m * H + j];
          const double* w_ih = &d.w_ih[(m * H + j) * I];
          if (c.tokens) {
            z += w_ih[d.ids[(m * B + b) * T_ + t]];
          } else {
            for (int64_t i = 0; i < I; ++i) z += w_ih[i] * d.x[((m * B + b) * T_ + t) * I + i];
          }
          for (int64_t k = 0; k < H; ++k) z += d.w_hh[(m * H + j) * H + k] * h[k];
          next[j] = activate(c.relu, z);
        }
        h.swap(next);
        std::copy(h.begin(), h.end(), &states[((m * B + b) * T_ + t) * H]);
      }
    }
  return states;
}

// y_t = W_out h_t + b_out at every step: [M, B, T, O].
std::vector<double> reference_readout(const RnnCase& c, const RnnData& d, const std::vector<double>& states) {
  const int64_t M = c.M, B = c.B, T_ = c.T, H = c.H, O = c.O;
  std::vector<double> y(M * B * T_ * O);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t bt = 0; bt < B * T_; ++bt)
      for (int64_t o = 0; o < O; ++o) {
        double s = d.b_out.empty() ? 0.0 : d.b_out[m * O + o];
        for (int64_t j = 0; j < H; ++j) s += d.w_out[(m * O + o) * H + j] * states[(m * B * T_ + bt) * H + j];
        y[(m * B * T_ + bt) * O + o] = s;
      }
  return y;
}

// [M, B, T, n] -> [M, B, n] at step T - 1.
std::vector<double> last_step(const std::vector<double>& all, int64_t MB, int64_t T_, int64_t n) {
  std::vector<double> out(MB * n);
  for (int64_t r = 0; r < MB; ++r) std::copy_n(&all[(r * T_ + T_ - 1) * n], n, &out[r * n]);
  return out;
}

template <class T>
std::vector<T> as(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}
template <class V>
ptr_t ptr_or_0(V& v) {
  return v.empty() ? 0 : ptr_of(v.data());
}

struct Strides {
  int64_t m, b, t, i, size;
};
// x's storage ([M, B, T, I]; ids: I = 1): 0 contiguous, 1 every other element (a stride of 2
// on the innermost axis), 2 time-major ([M, T, B, I] storage).
Strides x_strides(int layout, int64_t M, int64_t B, int64_t T_, int64_t I) {
  if (layout == 1) return {2 * B * T_ * I, 2 * T_ * I, 2 * I, 2, 2 * M * B * T_ * I};
  if (layout == 2) return {B * T_ * I, I, B * I, 1, M * B * T_ * I};
  return {B * T_ * I, T_ * I, I, 1, M * B * T_ * I};
}

// The kernel's inputs in dtype T, in the case's layouts, gaps poisoned (NaN values, token ids
// out of range: reading one makes the kernel throw).
template <class T>
struct RnnInputs {
  Strides xs;
  std::vector<int64_t> ids;
  std::vector<T> x, w_ih, w_hh, bias, h0, w_out, b_out;
  RnnInputs(const RnnCase& c, const RnnData& d) {
    const int64_t M = c.M, B = c.B, T_ = c.T, I = c.I, H = c.H;
    xs = x_strides(c.x_layout, M, B, T_, c.tokens ? 1 : I);
    if (c.tokens) {
      ids.assign(std::max<int64_t>(xs.size, 1), I + 1000);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t b = 0; b < B; ++b)
          for (int64_t t = 0; t < T_; ++t) ids[m * xs.m + b * xs.b + t * xs.t] = d.ids[(m * B + b) * T_ + t];
    } else {
      x.assign(std::max<int64_t>(xs.size, 1), T(kNaN));
      for (int64_t m = 0; m < M; ++m)
        for (int64_t b = 0; b < B; ++b)
          for (int64_t t = 0; t < T_; ++t)
            for (int64_t i = 0; i < I; ++i)
              x[m * xs.m + b * xs.b + t * xs.t + i * xs.i] = T(d.x[((m * B + b) * T_ + t) * I + i]);
    }
    w_ih.resize(M * H * I);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t j = 0; j < H; ++j)
        for (int64_t i = 0; i < I; ++i)
          w_ih[m * H * I + (c.w_ih_transposed ? i * H + j : j * I + i)] = T(d.w_ih[(m * H + j) * I + i]);
    w_hh = as<T>(d.w_hh);
    bias = as<T>(d.bias);
    h0 = as<T>(d.h0);
    w_out = as<T>(d.w_out);
    b_out = as<T>(d.b_out);
  }
  int64_t w_ih_stride_h(const RnnCase& c) const { return c.w_ih_transposed ? 1 : c.I; }
  int64_t w_ih_stride_i(const RnnCase& c) const { return c.w_ih_transposed ? c.H : 1; }

  gf::rnn::ForwardParams forward_params(const RnnCase& c) {
    gf::rnn::ForwardParams p;
    p.M = c.M, p.B = c.B, p.T = c.T, p.I = c.I, p.H = c.H, p.O = c.O;
    p.tokens = c.tokens;
    p.activation = c.relu ? Activation::Relu : Activation::Tanh;
    p.dtype = dtype_of<T>();
    p.x = c.tokens ? ptr_of(ids.data()) : ptr_of(x.data());
    p.x_stride_m = xs.m, p.x_stride_b = xs.b, p.x_stride_t = xs.t, p.x_stride_i = c.tokens ? 0 : xs.i;
    p.w_ih = ptr_of(w_ih.data());
    p.w_ih_stride_h = w_ih_stride_h(c), p.w_ih_stride_i = w_ih_stride_i(c);
    p.w_hh = ptr_of(w_hh.data());
    p.bias = ptr_or_0(bias);
    p.h0 = ptr_or_0(h0);
    p.w_out = ptr_or_0(w_out);
    p.b_out = ptr_or_0(b_out);
    p.y_mode = c.O > 0 ? c.y_mode : OutputMode::None;
    p.num_threads = c.threads;
    return p;
  }
};

template <class T>
struct ForwardOut {
  Out<T> y, h_all, h_last;
  ForwardOut(const RnnCase& c)
      : y(c.O == 0 || c.y_mode == OutputMode::None ? 0
          : c.y_mode == OutputMode::All            ? c.M * c.B * c.T * c.O
                                                   : c.M * c.B * c.O,
          T(kNaN)),
        h_all(c.want_all ? c.M * c.B * c.T * c.H : 0, T(kNaN)),
        h_last(c.want_last ? c.M * c.B * c.H : 0, T(kNaN)) {}
  void attach(const RnnCase& c, gf::rnn::ForwardParams& p) {
    p.y = y.n ? y.ptr() : 0;
    p.h_all = c.want_all ? h_all.ptr() : 0;
    p.h_last = c.want_last ? h_last.ptr() : 0;
  }
};

template <class T>
void check_forward(Check& check, const RnnCase& c, const RnnData& d, ForwardOut<T>& out) {
  const double rtol = rtol_of<T>();
  const std::vector<double> states = reference_states(c, d);
  if (c.want_all) expect_close(check, "h_all", out.h_all.data(), states, rtol);
  if (c.want_last) {
    std::vector<double> h_last = d.h0.empty() ? std::vector<double>(c.M * c.B * c.H, 0.0) : d.h0;  // T = 0
    if (c.T > 0) h_last = last_step(states, c.M * c.B, c.T, c.H);
    expect_close(check, "h_last", out.h_last.data(), h_last, rtol);
  }
  if (out.y.n) {
    const std::vector<double> y = reference_readout(c, d, states);
    expect_close(check, "y", out.y.data(), c.y_mode == OutputMode::All ? y : last_step(y, c.M * c.B, c.T, c.O), rtol);
  }
  expect_guards(check, "y", out.y);
  expect_guards(check, "h_all", out.h_all);
  expect_guards(check, "h_last", out.h_last);
}

// Runs the forward of case c into out and checks it; returns its params for further calls.
template <class T>
gf::rnn::ForwardParams run_forward(Check& check, const RnnCase& c, const RnnData& d,
                                   RnnInputs<T>& in, ForwardOut<T>& out) {
  gf::rnn::ForwardParams p = in.forward_params(c);
  out.attach(c, p);
  gf::rnn::forward_cpu(p);
  check_forward(check, c, d, out);
  return p;
}

template <class T>
void forward_case(Check& check, const RnnCase& c, uint64_t seed) {
  Rng rng(seed);
  const RnnData d = make_rnn_data<T>(c, rng);
  RnnInputs<T> in(c, d);
  ForwardOut<T> out(c);
  run_forward(check, c, d, in, out);
}

// Odd shapes (H not a multiple of any vector width, B across tile sizes), each
// with flags drawn from the case's index, so every flag meets many shapes.
std::vector<RnnCase> rnn_table(uint64_t seed) {
  std::vector<RnnCase> cases;
  Rng rng(seed);
  for (int64_t M : {1, 2})
    for (int64_t H : {1, 3, 17, 100})
      for (int64_t B : {1, 3, 13, 29})
        for (int64_t T_ : {1, 2, 7}) {
          RnnCase c;
          c.M = M, c.H = H, c.B = B, c.T = T_;
          c.tokens = rng.coin();
          c.I = c.tokens ? rng.pick(std::vector<int64_t>{1, 2, 5}) : rng.pick(std::vector<int64_t>{1, 3, 8});
          c.relu = rng.coin();
          c.with_h0 = rng.coin();
          c.with_bias = rng.coin();
          c.O = rng.pick(std::vector<int64_t>{0, 2, 2});
          c.with_b_out = rng.coin();
          c.y_mode = rng.coin() ? OutputMode::All : OutputMode::Last;
          c.want_all = rng.below(3) != 0;
          c.want_last = !c.want_all || rng.coin();
          c.w_ih_transposed = rng.coin();
          c.x_layout = int(rng.below(3));
          c.threads = int(rng.below(3));  // 0: the kernel's default
          cases.push_back(c);
        }
  return cases;
}

template <class T>
void test_forward(Group& g) {
  const std::vector<RnnCase> cases = rnn_table(1);
  for (size_t k = 0; k < cases.size(); ++k)
    g.run(cases[k].describe(), [&](Check& check) { forward_case<T>(check, cases[k], 100 + k); });
}

// Token rows from a zero state share their first steps' states (the forward runs one row per
// prefix there): the reference, and the same call with an explicit zero h0 (the plain path),
// which must give the same values.
template <class T>
void test_forward_prefixes(Group& g) {
  int k = 0;
  for (int64_t M : {1, 2})
    for (int64_t H : {3, 17, 100})
      for (int threads : {1, 2})
        for (OutputMode y_mode : {OutputMode::All, OutputMode::Last}) {
          RnnCase c;
          c.M = M, c.B = 29, c.T = 7, c.I = 2, c.H = H, c.O = 2;
          c.tokens = true, c.relu = (k % 2) != 0, c.with_h0 = false, c.with_bias = (k % 3) != 0;
          c.y_mode = y_mode, c.threads = threads;
          c.want_all = (k % 4) != 3, c.want_last = true;
          c.w_ih_transposed = (k % 2) == 0, c.x_layout = k % 3;
          ++k;
          g.run(c.describe(), [&](Check& check) {
            Rng rng(500 + k);
            const RnnData d = make_rnn_data<T>(c, rng);
            RnnInputs<T> in(c, d);
            ForwardOut<T> out(c);
            gf::rnn::ForwardParams p = run_forward(check, c, d, in, out);

            std::vector<T> zeros(c.M * c.B * c.H, T(0));
            p.h0 = ptr_of(zeros.data());
            ForwardOut<T> plain(c);
            plain.attach(c, p);
            gf::rnn::forward_cpu(p);
            const auto same = [&](const char* what, const Out<T>& a, const Out<T>& b) {
              for (size_t i = 0; i < a.n; ++i)
                if (!(a.data()[i] == b.data()[i])) {
                  check.fail(format("%s [%zu]: %.10g with prefix sharing, %.10g from an explicit zero h0",
                                    what, i, double(a.data()[i]), double(b.data()[i])));
                  return;
                }
            };
            same("y", out.y, plain.y);
            same("h_all", out.h_all, plain.h_all);
            same("h_last", out.h_last, plain.h_last);
          });
        }
}

// Ids out of range are rejected with the argument's name, and the kernel stays usable.
template <class T>
void test_forward_bad_ids(Group& g) {
  for (int threads : {1, 2}) {
    RnnCase c;
    c.B = 13, c.T = 7, c.I = 3, c.H = 17, c.threads = threads;
    g.run(c.describe() + " id == I", [&](Check& check) {
      Rng rng(77);
      RnnData d = make_rnn_data<T>(c, rng);
      RnnInputs<T> in(c, d);
      in.ids[5 * in.xs.b + 4 * in.xs.t] = c.I;
      gf::rnn::ForwardParams p = in.forward_params(c);
      ForwardOut<T> out(c);
      out.attach(c, p);
      try {
        gf::rnn::forward_cpu(p);
        check.fail("no exception for a token id out of range");
      } catch (const std::invalid_argument& e) {
        check.expect(std::strstr(e.what(), "token ids must lie in") != nullptr,
                     std::string("unexpected message: ") + e.what());
      }
      forward_case<T>(check, c, 78);
    });
  }
}

// Nothing to run: with T = 0 the forward's last state is h0 (zeros without), and the backward
// overwrites its sums with zeros (B = 0 or T = 0).
template <class T>
void test_rnn_empty(Group& g) {
  for (int64_t B : {0, 3})
    for (bool with_h0 : {false, true}) {
      RnnCase c;
      c.B = B, c.T = 0, c.I = 2, c.H = 5, c.O = 2, c.with_h0 = with_h0, c.y_mode = OutputMode::All;
      c.want_all = false;
      g.run("forward " + c.describe(), [&](Check& check) { forward_case<T>(check, c, 5); });
    }
  for (int64_t B : {0, 3}) {
    const int64_t M = 2, T_ = B ? 0 : 4, H = 5, I = 2, O = 2;
    g.run(format("backward M=2 B=%lld T=%lld: sums zeroed", (long long)B, (long long)T_), [&](Check& check) {
      std::vector<T> none(1), w_hh(M * H * H, T(0.5)), w_out(M * O * H, T(0.5));
      std::vector<int64_t> ids(1, 0);
      Out<T> d_bias(M * H, T(kNaN)), d_w_ih(M * H * I, T(kNaN)), d_w_out(M * O * H, T(kNaN)),
          d_b_out(M * O, T(kNaN)), d_w_hh(M * H * H, T(kNaN));
      gf::rnn::BackwardParams p;
      p.M = M, p.B = B, p.T = T_, p.H = H, p.I = I, p.O = O;
      p.dtype = dtype_of<T>();
      p.states = ptr_of(none.data()), p.w_hh = ptr_of(w_hh.data());
      p.gy_mode = OutputMode::All, p.gy = ptr_of(none.data()), p.w_out = ptr_of(w_out.data());
      p.ids = ptr_of(ids.data()), p.d_w_ih_stride_h = I, p.d_w_ih_stride_i = 1;
      p.d_bias = d_bias.ptr(), p.d_w_ih = d_w_ih.ptr(), p.d_w_out = d_w_out.ptr(), p.d_b_out = d_b_out.ptr();
      p.d_w_hh = d_w_hh.ptr();
      gf::rnn::backward_cpu(p);
      const std::pair<const char*, Out<T>*> sums[] = {
          {"d_bias", &d_bias}, {"d_w_ih", &d_w_ih}, {"d_w_out", &d_w_out}, {"d_b_out", &d_b_out}, {"d_w_hh", &d_w_hh}};
      for (const auto& [name, o] : sums) {
        expect_close(check, name, o->data(), std::vector<double>(o->n, 0.0), 0.0);
        expect_guards(check, name, *o);
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Tracking: an extracted automaton checked alongside the forward (TrackParams).

struct TrackProblem {
  RnnCase c;  // M = 1, tokens, O >= 1
  RnnData d;
  bool generate = false;
  uint64_t seed = 0;
  std::vector<double> centers;  // [S, H]
  std::vector<int64_t> center_state, machine_next, target_next, target_out;
  int64_t S = 0, K = 0, Q = 0, machine_initial = 0, target_initial = 0;
};

struct TrackExpected {
  std::vector<int64_t> first, agree, correct;
  std::vector<double> max_distance;
  double margin = kInf;  // smallest gap to a second-nearest center or a second-largest readout
};

uint64_t mix64(uint64_t z) {  // grokfast.ops.track.random_symbols
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
int64_t generated_token(uint64_t seed, int64_t b, int64_t t, int64_t I) {
  const uint64_t key = (uint64_t(b) << 32) ^ uint64_t(t);
  return int64_t((mix64(key ^ mix64(seed)) >> 11) % uint64_t(I));
}

// grokfast.ref.rnn_track_reference, in double.
TrackExpected reference_track(const TrackProblem& tp) {
  const RnnCase& c = tp.c;
  const int64_t B = c.B, T_ = c.T, H = c.H, O = c.O, I = c.I;
  const std::vector<double> states = reference_states(c, tp.d);
  const std::vector<double> y = reference_readout(c, tp.d, states);
  TrackExpected e;
  e.first.assign(B, -1), e.agree.assign(B, 0), e.correct.assign(B, 0), e.max_distance.assign(B, 0);
  for (int64_t b = 0; b < B; ++b) {
    int64_t qm = tp.machine_initial, qt = tp.target_initial;
    for (int64_t t = 0; t < T_; ++t) {
      const double* h = &states[(b * T_ + t) * H];
      std::vector<double> d2(tp.S, 0.0);
      for (int64_t s = 0; s < tp.S; ++s)
        for (int64_t j = 0; j < H; ++j) d2[s] += (h[j] - tp.centers[s * H + j]) * (h[j] - tp.centers[s * H + j]);
      const int64_t nearest = std::min_element(d2.begin(), d2.end()) - d2.begin();  // the first minimum
      const double best = d2[nearest];
      // Exact ties (duplicate centers) are decided by index; anything else must be well apart.
      for (double other : d2)
        if (other != best) e.margin = std::min(e.margin, (other - best) / (1 + best));
      const int64_t sym = tp.d.ids[b * T_ + t];
      qm = qm >= 0 ? tp.machine_next[qm * I + sym] : -1;
      qt = tp.target_next[qt * I + sym];
      const bool ok = qm >= 0 && tp.center_state[nearest] == qm;
      e.agree[b] += ok;
      if (!ok && e.first[b] < 0) e.first[b] = t;
      const double* yt = &y[(b * T_ + t) * O];
      const int64_t arg = std::max_element(yt, yt + O) - yt;  // the first maximum
      for (int64_t o = 0; o < O; ++o)
        if (yt[o] != yt[arg]) e.margin = std::min(e.margin, yt[arg] - yt[o]);
      e.correct[b] += arg == tp.target_out[qt];
      e.max_distance[b] = std::max(e.max_distance[b], std::sqrt(best));
    }
  }
  return e;
}

// A ReLU network that computes parity exactly in units 0-3 (one-hot of (parity, last token):
// a = [p=0, x=0], b = [p=0, x=1], c = [p=1, x=0], d = [p=1, x=1]), plus small noise units fed
// by the tokens that never feed back. Centers sit on the four one-hot states; center d's state
// is unknown (-1), so steps that land there disagree; the target counts ones mod 3. Exact ties
// go to the lowest index: centers 5 and 6 repeat centers 0 and 2 with other states, and
// readout 2 repeats readout 1.
template <class T>
TrackProblem parity_problem(int64_t B, int64_t T_, bool partial_machine, Rng& rng) {
  TrackProblem tp;
  RnnCase& c = tp.c;
  c.B = B, c.T = T_, c.I = 2, c.H = 7, c.O = 3, c.tokens = true, c.relu = true;
  c.with_h0 = true, c.with_bias = rng.coin(), c.with_b_out = rng.coin();
  const int64_t H = c.H;
  RnnData& d = tp.d;
  d.ids.resize(B * T_);
  for (int64_t& id : d.ids) id = rng.below(2);
  d.w_hh.assign(H * H, 0.0);
  // a, c <- s = h_a + h_b (parity 0) or h_c + h_d (parity 1), minus the token's input below.
  // a = relu(s0 - x), b = relu(s1 + x - 1), c = relu(s1 - x), d = relu(s0 + x - 1) with
  // s0 = h_a + h_b, s1 = h_c + h_d: the token's column of W_ih holds the -x and x - 1 terms.
  const int64_t from[4] = {0, 2, 2, 0};  // the first of the two units each unit sums
  for (int64_t j = 0; j < 4; ++j) d.w_hh[j * H + from[j]] = d.w_hh[j * H + from[j] + 1] = 1.0;
  for (int64_t j = 4; j < H; ++j)
    for (int64_t k = 4; k < H; ++k) d.w_hh[j * H + k] = double(T(0.3 * rng.uniform()));
  d.w_ih.assign(H * 2, 0.0);
  const double on_zero[4] = {0, -1, 0, -1}, on_one[4] = {-1, 0, -1, 0};
  for (int64_t j = 0; j < 4; ++j) d.w_ih[j * 2] = on_zero[j], d.w_ih[j * 2 + 1] = on_one[j];
  for (int64_t j = 4; j < H; ++j) d.w_ih[j * 2] = double(T(0.05 * rng.uniform(0, 1))), d.w_ih[j * 2 + 1] = double(T(0.05 * rng.uniform(0, 1)));
  if (c.with_bias) d.bias.assign(H, 0.0);
  d.h0.assign(B * H, 0.0);
  for (int64_t b = 0; b < B; ++b) d.h0[b * H] = 1.0;  // parity 0
  d.w_out.assign(3 * H, 0.0);
  d.w_out[0] = d.w_out[1] = d.w_out[H + 2] = d.w_out[H + 3] = 1.0;
  for (int64_t j = 4; j < H; ++j) d.w_out[j] = double(T(0.1 * rng.uniform())), d.w_out[H + j] = double(T(0.1 * rng.uniform()));
  std::copy_n(&d.w_out[H], H, &d.w_out[2 * H]);
  if (c.with_b_out) d.b_out = {double(T(0.05)), double(T(-0.05)), double(T(-0.05))};
  tp.S = 7;
  tp.centers.assign(tp.S * H, 0.0);
  for (int64_t s = 0; s < 4; ++s) tp.centers[s * H + s] = 1.0;
  for (int64_t j = 0; j < H; ++j) tp.centers[4 * H + j] = 5.0;  // a far decoy
  tp.centers[5 * H + 0] = tp.centers[6 * H + 2] = 1.0;
  tp.center_state = {0, 0, 1, -1, 1, 1, 0};
  tp.K = 2;
  tp.machine_next = partial_machine ? std::vector<int64_t>{0, 1, 1, -1} : std::vector<int64_t>{0, 1, 1, 0};
  tp.Q = 3;
  tp.target_next = {0, 1, 1, 2, 2, 0};
  tp.target_out = {0, 1, 1};
  return tp;
}

// A random tanh network with random centers and machines (some transitions undefined), drawn
// until no decision lies near a tie; tokens drawn by the kernel from a seed or passed in.
template <class T>
TrackProblem random_track_problem(int64_t B, int64_t T_, bool generate, uint64_t seed) {
  for (uint64_t attempt = 0; attempt < 64; ++attempt) {
    Rng rng(seed * 1000 + attempt);
    TrackProblem tp;
    RnnCase& c = tp.c;
    c.B = B, c.T = T_, c.I = 3, c.H = 17, c.O = 3, c.tokens = true, c.relu = false;
    c.with_h0 = rng.coin(), c.with_bias = rng.coin(), c.with_b_out = rng.coin();
    tp.d = make_rnn_data<T>(c, rng);
    tp.generate = generate;
    tp.seed = rng.next();
    if (generate)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T_; ++t) tp.d.ids[b * T_ + t] = generated_token(tp.seed, b, t, c.I);
    tp.S = 6;
    tp.centers = random_values<T>(rng, tp.S * c.H, 0.7);
    tp.K = 3, tp.Q = 2;
    for (int64_t s = 0; s < tp.S; ++s) tp.center_state.push_back(rng.below(tp.K + 1) - 1);
    for (int64_t k = 0; k < tp.K * c.I; ++k) tp.machine_next.push_back(rng.below(6) == 0 ? -1 : rng.below(tp.K));
    for (int64_t k = 0; k < tp.Q * c.I; ++k) tp.target_next.push_back(rng.below(tp.Q));
    tp.target_out = {rng.below(c.O), rng.below(c.O)};
    tp.machine_initial = rng.below(tp.K), tp.target_initial = rng.below(tp.Q);
    if (reference_track(tp).margin > 1e-3) return tp;
  }
  throw std::logic_error("no well-separated tracking problem drawn");
}

template <class T>
void track_case(Check& check, const TrackProblem& tp, int threads) {
  const RnnCase& c = tp.c;
  RnnInputs<T> in(c, tp.d);
  gf::rnn::ForwardParams p = in.forward_params(c);
  p.y_mode = OutputMode::None;  // as grokfast.ops.rnn_track: only the tracking results
  p.num_threads = threads;
  if (tp.generate) {
    p.generate_tokens = true;
    p.seed = tp.seed;
    p.x = 0;
  }
  std::vector<T> centers = as<T>(tp.centers);
  Out<int64_t> first(c.B, -7), agree(c.B, -7), correct(c.B, -7);
  Out<float> max_distance(c.B, float(kNaN));
  gf::rnn::TrackParams tr;
  tr.S = tp.S, tr.centers = ptr_of(centers.data()), tr.center_state = ptr_of(tp.center_state.data());
  tr.K = tp.K, tr.machine_next = ptr_of(tp.machine_next.data()), tr.machine_initial = tp.machine_initial;
  tr.Q = tp.Q, tr.target_next = ptr_of(tp.target_next.data()), tr.target_out = ptr_of(tp.target_out.data());
  tr.target_initial = tp.target_initial;
  tr.first_disagreement = first.ptr(), tr.agree_steps = agree.ptr(), tr.correct_steps = correct.ptr();
  tr.max_distance = max_distance.ptr();
  p.track = &tr;
  gf::rnn::forward_cpu(p);

  const TrackExpected e = reference_track(tp);
  check.expect(e.margin > 1e-6, "the problem has a near tie (test bug)");
  for (int64_t b = 0; b < c.B; ++b) {
    check.expect(first.data()[b] == e.first[b], format("first_disagreement[%lld] = %lld, want %lld", (long long)b,
                                                       (long long)first.data()[b], (long long)e.first[b]));
    check.expect(agree.data()[b] == e.agree[b], format("agree_steps[%lld] = %lld, want %lld", (long long)b,
                                                       (long long)agree.data()[b], (long long)e.agree[b]));
    check.expect(correct.data()[b] == e.correct[b], format("correct_steps[%lld] = %lld, want %lld", (long long)b,
                                                           (long long)correct.data()[b], (long long)e.correct[b]));
  }
  // Distances near zero (the parity states sit on their centers) only have absolute accuracy.
  std::vector<double> want = e.max_distance;
  expect_close(check, "max_distance", max_distance.data(), want, sizeof(T) == 4 ? 1e-4 : 1e-7);
  expect_guards(check, "first_disagreement", first);
  expect_guards(check, "agree_steps", agree);
  expect_guards(check, "correct_steps", correct);
  expect_guards(check, "max_distance", max_distance);
  // The decisions vary over the rows, so the counts test something.
  int64_t agreeing = 0, correct_total = 0;
  for (int64_t b = 0; b < c.B; ++b) agreeing += e.agree[b], correct_total += e.correct[b];
  check.expect(agreeing > 0 && agreeing < c.B * c.T && correct_total > 0 && correct_total < c.B * c.T,
               "degenerate problem: every step agrees or none does (test bug)");
}

template <class T>
void test_track(Group& g) {
  for (bool partial : {false, true})
    for (int threads : {1, 2}) {
      Rng rng(900 + 2 * partial + threads);
      const TrackProblem tp = parity_problem<T>(13, 7, partial, rng);
      g.run(format("parity ReLU net, %s tracked machine, B=13 T=7 threads=%d", partial ? "partial" : "parity", threads),
            [&](Check& check) { track_case<T>(check, tp, threads); });
    }
  for (bool generate : {false, true})
    for (int threads : {1, 2}) {
      const TrackProblem tp = random_track_problem<T>(29, 7, generate, 40 + 2 * generate + threads);
      g.run(format("random tanh net, %s tokens, B=29 T=7 threads=%d", generate ? "generated" : "given", threads),
            [&](Check& check) { track_case<T>(check, tp, threads); });
    }
}

// ---------------------------------------------------------------------------------------------
// Backward (BPTT; see BackwardParams)

struct BackwardCase {
  RnnCase c;
  bool g_all = false, g_last = false;
  OutputMode gy_mode = OutputMode::None;
  bool want_dz = true, want_dh0 = true, want_bias = true, want_w_ih = true, want_w_out = true,
       want_b_out = true, want_w_hh = true;
  std::string describe() const {
    return c.describe() + format(" |%s%s gy=%s%s%s%s%s%s%s%s", g_all ? " g_all" : "", g_last ? " g_last" : "",
                                 gy_mode == OutputMode::All ? "all" : gy_mode == OutputMode::Last ? "last" : "none",
                                 want_dz ? " dz" : "", want_dh0 ? " dh0" : "", want_bias ? " d_bias" : "",
                                 want_w_ih && c.tokens ? " d_w_ih" : "", want_w_out ? " d_w_out" : "",
                                 want_b_out ? " d_b_out" : "", want_w_hh ? " d_w_hh" : "");
  }
};

struct Grads {
  std::vector<double> dz;  // [M, B, T, H]: dz_t
  std::vector<double> dh0, d_bias, d_w_ih, d_w_out, d_b_out, d_w_hh;
};

// dz_t = (g_t + W_hh^T dz_{t+1}) act'(h_t), g_t = g_all_t (+ g_last at T-1) + W_out^T gy_t;
// every sum written out over (b, t).
Grads reference_backward(const BackwardCase& bc, const RnnData& d, const std::vector<double>& states,
                         const std::vector<double>& g_all, const std::vector<double>& g_last,
                         const std::vector<double>& gy) {
  const RnnCase& c = bc.c;
  const int64_t M = c.M, B = c.B, T_ = c.T, H = c.H, I = c.I, O = c.O;
  Grads r;
  r.dz.assign(M * B * T_ * H, 0.0);
  r.dh0.assign(M * B * H, 0.0);
  r.d_bias.assign(M * H, 0.0);
  r.d_w_ih.assign(M * H * I, 0.0);
  r.d_w_out.assign(M * O * H, 0.0);
  r.d_b_out.assign(M * O, 0.0);
  r.d_w_hh.assign(M * H * H, 0.0);
  std::vector<double> g(H), next(H);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < B; ++b) {
      std::fill(next.begin(), next.end(), 0.0);  // dz_T = 0
      for (int64_t t = T_ - 1; t >= 0; --t) {
        const int64_t row = (m * B + b) * T_ + t;
        const double* h = &states[row * H];
        const double* gy_t = nullptr;
        if (bc.gy_mode == OutputMode::All) gy_t = &gy[row * O];
        if (bc.gy_mode == OutputMode::Last && t == T_ - 1) gy_t = &gy[(m * B + b) * O];
        for (int64_t j = 0; j < H; ++j) {
          double s = bc.g_all ? g_all[row * H + j] : 0.0;
          if (bc.g_last && t == T_ - 1) s += g_last[(m * B + b) * H + j];
          if (gy_t)
            for (int64_t o = 0; o < O; ++o) s += d.w_out[(m * O + o) * H + j] * gy_t[o];
          for (int64_t i = 0; i < H; ++i) s += d.w_hh[(m * H + i) * H + j] * next[i];
          const double slope = c.relu ? (h[j] > 0 ? 1.0 : 0.0) : 1.0 - h[j] * h[j];
          g[j] = s * slope;
        }
        next = g;
        std::copy(g.begin(), g.end(), &r.dz[row * H]);
        for (int64_t j = 0; j < H; ++j) r.d_bias[m * H + j] += g[j];
        if (c.tokens)
          for (int64_t j = 0; j < H; ++j) r.d_w_ih[(m * H + j) * I + d.ids[row]] += g[j];
        if (gy_t)
          for (int64_t o = 0; o < O; ++o) {
            r.d_b_out[m * O + o] += gy_t[o];
            for (int64_t j = 0; j < H; ++j) r.d_w_out[(m * O + o) * H + j] += gy_t[o] * h[j];
          }
        // dW_hh += dz_t h_{t-1}^T, h_{-1} = h0 (zeros without)
        const double* prev = t > 0 ? &states[(row - 1) * H] : d.h0.empty() ? nullptr : &d.h0[(m * B + b) * H];
        if (prev)
          for (int64_t i = 0; i < H; ++i)
            for (int64_t k = 0; k < H; ++k) r.d_w_hh[(m * H + i) * H + k] += g[i] * prev[k];
      }
      for (int64_t j = 0; j < H; ++j) {
        double s = 0;
        for (int64_t i = 0; i < H; ++i) s += d.w_hh[(m * H + i) * H + j] * next[i];
        r.dh0[(m * B + b) * H + j] = s;
      }
    }
  return r;
}

template <class T>
void backward_case(Check& check, const BackwardCase& bc, uint64_t seed) {
  const RnnCase& c = bc.c;
  const int64_t M = c.M, B = c.B, T_ = c.T, H = c.H, I = c.I, O = c.O;
  Rng rng(seed);
  const RnnData d = make_rnn_data<T>(c, rng);
  RnnInputs<T> in(c, d);
  // The forward's states, as the kernel would get them (rows with a common token prefix from
  // a zero start are equal, which its dW_hh relies on).
  std::vector<double> states = reference_states(c, d);
  for (double& v : states) v = double(T(v));
  const std::vector<double> g_all = bc.g_all ? random_values<T>(rng, M * B * T_ * H, 1.0) : std::vector<double>{};
  const std::vector<double> g_last = bc.g_last ? random_values<T>(rng, M * B * H, 1.0) : std::vector<double>{};
  std::vector<double> gy;
  if (bc.gy_mode == OutputMode::All) gy = random_values<T>(rng, M * B * T_ * O, 1.0);
  if (bc.gy_mode == OutputMode::Last) gy = random_values<T>(rng, M * B * O, 1.0);
  std::vector<T> states_t = as<T>(states), g_all_t = as<T>(g_all), g_last_t = as<T>(g_last), gy_t = as<T>(gy);

  const bool has_gy = bc.gy_mode != OutputMode::None;
  const bool w_ih_out = bc.want_w_ih && c.tokens;
  const T poison = T(kNaN);  // the CPU kernel overwrites every output
  Out<T> dz_next(bc.want_dz ? M * B * T_ * H : 0, poison), dz0(bc.want_dz ? M * B * H : 0, poison),
      dh0(bc.want_dh0 ? M * B * H : 0, poison), d_bias(bc.want_bias ? M * H : 0, poison),
      d_w_ih(w_ih_out ? M * H * I : 0, poison), d_w_out(bc.want_w_out && has_gy ? M * O * H : 0, poison),
      d_b_out(bc.want_b_out && has_gy ? M * O : 0, poison), d_w_hh(bc.want_w_hh ? M * H * H : 0, poison);
  const auto out_ptr = [](Out<T>& o) { return o.n ? o.ptr() : ptr_t(0); };

  gf::rnn::BackwardParams p;
  p.M = M, p.B = B, p.T = T_, p.H = H, p.I = I, p.O = O;
  p.activation = c.relu ? Activation::Relu : Activation::Tanh;
  p.dtype = dtype_of<T>();
  p.states = ptr_of(states_t.data());
  p.w_hh = ptr_of(in.w_hh.data());
  p.g_all = ptr_or_0(g_all_t);
  p.g_last = ptr_or_0(g_last_t);
  p.gy_mode = bc.gy_mode;
  p.gy = ptr_or_0(gy_t);
  p.w_out = has_gy ? ptr_of(in.w_out.data()) : 0;
  if (c.tokens) {
    p.ids = ptr_of(in.ids.data());
    p.ids_stride_m = in.xs.m, p.ids_stride_b = in.xs.b, p.ids_stride_t = in.xs.t;
  }
  p.d_bias = out_ptr(d_bias);
  p.d_w_ih = out_ptr(d_w_ih);
  p.d_w_ih_stride_h = in.w_ih_stride_h(c), p.d_w_ih_stride_i = in.w_ih_stride_i(c);
  p.d_w_out = out_ptr(d_w_out);
  p.d_b_out = out_ptr(d_b_out);
  p.dz_next = out_ptr(dz_next);
  p.dz0 = out_ptr(dz0);
  p.dh0 = out_ptr(dh0);
  p.d_w_hh = out_ptr(d_w_hh);
  p.h0 = ptr_or_0(in.h0);
  p.num_threads = c.threads;
  gf::rnn::backward_cpu(p);

  const Grads r = reference_backward(bc, d, states, g_all, g_last, gy);
  const double rtol = rtol_of<T>();
  if (bc.want_dz) {
    std::vector<double> shifted(M * B * T_ * H, 0.0), first(M * B * H);
    for (int64_t mb = 0; mb < M * B; ++mb) {
      for (int64_t t = 0; t + 1 < T_; ++t)
        std::copy_n(&r.dz[(mb * T_ + t + 1) * H], H, &shifted[(mb * T_ + t) * H]);
      std::copy_n(&r.dz[mb * T_ * H], H, &first[mb * H]);
    }
    expect_close(check, "dz_next", dz_next.data(), shifted, rtol);
    expect_close(check, "dz0", dz0.data(), first, rtol);
  }
  if (bc.want_dh0) expect_close(check, "dh0", dh0.data(), r.dh0, rtol);
  if (bc.want_bias) expect_close(check, "d_bias", d_bias.data(), r.d_bias, rtol);
  if (w_ih_out) {
    std::vector<T> d_w_ih_hi(M * H * I);  // back to [M, H, I]
    for (int64_t m = 0; m < M; ++m)
      for (int64_t j = 0; j < H; ++j)
        for (int64_t i = 0; i < I; ++i)
          d_w_ih_hi[(m * H + j) * I + i] = d_w_ih.data()[m * H * I + j * p.d_w_ih_stride_h + i * p.d_w_ih_stride_i];
    expect_close(check, "d_w_ih", d_w_ih_hi.data(), r.d_w_ih, rtol);
  }
  if (d_w_out.n) expect_close(check, "d_w_out", d_w_out.data(), r.d_w_out, rtol);
  if (d_b_out.n) expect_close(check, "d_b_out", d_b_out.data(), r.d_b_out, rtol);
  if (bc.want_w_hh) expect_close(check, "d_w_hh", d_w_hh.data(), r.d_w_hh, rtol);
  const std::pair<const char*, Out<T>*> outputs[] = {{"dz_next", &dz_next}, {"dz0", &dz0}, {"dh0", &dh0},
                                                      {"d_bias", &d_bias}, {"d_w_ih", &d_w_ih}, {"d_w_out", &d_w_out},
                                                      {"d_b_out", &d_b_out}, {"d_w_hh", &d_w_hh}};
  for (const auto& [name, o] : outputs) expect_guards(check, name, *o);
}

template <class T>
void test_backward(Group& g) {
  const std::vector<RnnCase> shapes = rnn_table(2);
  Rng rng(3);
  for (size_t k = 0; k < shapes.size(); ++k) {
    BackwardCase bc;
    bc.c = shapes[k];
    bc.g_all = rng.coin();
    bc.g_last = rng.coin();
    bc.gy_mode = bc.c.O == 0 ? OutputMode::None : rng.pick(std::vector<OutputMode>{OutputMode::None, OutputMode::Last, OutputMode::All});
    if (!bc.g_all && !bc.g_last && bc.gy_mode == OutputMode::None) bc.g_all = true;
    bc.want_dz = rng.coin();
    bc.want_dh0 = rng.coin();
    bc.want_bias = rng.coin();
    bc.want_w_ih = rng.coin();
    bc.want_w_out = rng.coin();
    bc.want_b_out = rng.coin();
    bc.want_w_hh = rng.below(4) != 0;
    g.run(bc.describe(), [&](Check& check) { backward_case<T>(check, bc, 300 + k); });
  }
  // Token rows without h0 share prefixes (dW_hh is summed per prefix), with and without h0,
  // one and two threads (two chunks of one model add their sums in order).
  int k = 0;
  for (int64_t M : {1, 2})
    for (bool h0 : {false, true})
      for (int threads : {1, 2}) {
        BackwardCase bc;
        RnnCase& c = bc.c;
        c.M = M, c.B = 29, c.T = 7, c.I = 2, c.H = k % 2 ? 17 : 100, c.O = 2, c.tokens = true;
        c.relu = k % 2 == 0, c.with_h0 = h0, c.threads = threads, c.x_layout = k % 3;
        c.w_ih_transposed = k % 2 == 1;
        bc.g_all = k % 3 == 0, bc.g_last = k % 3 == 1;
        bc.gy_mode = k % 2 ? OutputMode::All : OutputMode::Last;
        ++k;
        g.run("prefixes " + bc.describe(), [&](Check& check) { backward_case<T>(check, bc, 700 + k); });
      }
}

// ---------------------------------------------------------------------------------------------
// Pairs: a pair is within r iff sum_k (double(x_ik) - double(x_jk))^2 <= r * r, the sum in
// index order with fused multiply-adds (pairs.h, exact_d2): the reference evaluates that same
// definition, so decisions at ties agree exactly.

struct PointSet {
  int64_t n = 0, d = 0;
  std::vector<float> rows;  // [n, d] row-major, for the references
  std::vector<float> storage;
  gf::pairs::Points view;
  float at(int64_t i, int64_t k) const { return rows[i * d + k]; }
};

// layout: 0 row-major, 1 every other element (stride_d = 2, gaps NaN), 2 column-major.
PointSet make_points(std::vector<float> rows, int64_t n, int64_t d, int layout) {
  PointSet ps;
  ps.n = n, ps.d = d, ps.rows = std::move(rows);
  int64_t sn = d, sd = 1;
  if (layout == 1) sn = 2 * d, sd = 2;
  if (layout == 2) sn = 1, sd = std::max<int64_t>(n, 1);
  ps.storage.assign(std::max<int64_t>(n * d * (layout == 1 ? 2 : 1), 1), std::numeric_limits<float>::quiet_NaN());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < d; ++k) ps.storage[i * sn + k * sd] = ps.at(i, k);
  ps.view.data = ptr_of(ps.storage.data());
  ps.view.n = n, ps.view.d = d, ps.view.stride_n = sn, ps.view.stride_d = sd;
  return ps;
}

double d2(const PointSet& a, int64_t i, const PointSet& b, int64_t j) {
  double s = 0;
  for (int64_t k = 0; k < a.d; ++k) {
    const double diff = double(a.at(i, k)) - double(b.at(j, k));
    s = std::fma(diff, diff, s);
  }
  return s;
}

// Points of a lattice: offset + step * integer coordinates in [0, extent), duplicates likely
// when n approaches extent^d. Every distance and sum is exact in float64.
std::vector<float> lattice(Rng& rng, int64_t n, int64_t d, double step, double offset, int64_t extent) {
  std::vector<float> v(n * d);
  for (float& e : v) e = float(offset + step * double(rng.below(extent)));
  return v;
}
// Gaussian-free clusters: uniform centers in [-1, 1]^d, points within +-spread of one.
std::vector<float> clusters(Rng& rng, int64_t n, int64_t d, int64_t k, double spread) {
  std::vector<double> centers(k * d);
  for (double& e : centers) e = rng.uniform();
  std::vector<float> v(n * d);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = rng.below(k);
    for (int64_t j = 0; j < d; ++j) v[i * d + j] = float(centers[c * d + j] + spread * rng.uniform());
  }
  return v;
}
// Mutants of a few prototypes with coordinates in {0, 0.5}: squared distances are a quarter of
// the differing coordinates, so radii 1 and 1.5 are exact ties in 100 dimensions.
std::vector<float> binary_mutants(Rng& rng, int64_t n, int64_t d, int64_t prototypes, int64_t max_flips) {
  std::vector<float> proto(prototypes * d);
  for (float& e : proto) e = rng.coin() ? 0.5f : 0.f;
  std::vector<float> v(n * d);
  for (int64_t i = 0; i < n; ++i) {
    std::copy_n(&proto[rng.below(prototypes) * d], d, &v[i * d]);
    for (int64_t f = rng.below(max_flips + 1); f > 0; --f) {
      float& e = v[i * d + rng.below(d)];
      e = e == 0.f ? 0.5f : 0.f;
    }
  }
  return v;
}

// The eps-graph's components by union-find over every pair, numbered by first appearance.
std::vector<int64_t> reference_components(const PointSet& ps, double eps) {
  const int64_t n = ps.n;
  std::vector<int64_t> parent(n);
  std::iota(parent.begin(), parent.end(), 0);
  const auto root = [&](int64_t i) {
    while (parent[i] != i) i = parent[i] = parent[parent[i]];
    return i;
  };
  const double eps2 = eps * eps;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j)
      if (d2(ps, i, ps, j) <= eps2) parent[root(i)] = root(j);
  std::vector<int64_t> id_of_root(n, -1), labels(n);
  int64_t next = 0;
  for (int64_t i = 0; i < n; ++i) {
    int64_t& id = id_of_root[root(i)];
    if (id < 0) id = next++;
    labels[i] = id;
  }
  return labels;
}

struct ComponentsCase {
  std::string name;
  PointSet ps;
  double eps;
  int threads;
};

void run_components(Check& check, const ComponentsCase& cc) {
  Out<int64_t> labels(cc.ps.n, -7);
  std::vector<int64_t> stats(gf::pairs::kStats, 0);
  gf::pairs::ComponentsParams p;
  p.x = cc.ps.view;
  p.eps = cc.eps;
  p.labels = labels.ptr();
  p.stats = ptr_of(stats.data());
  p.num_threads = cc.threads;
  gf::pairs::components_cpu(p);
  const std::vector<int64_t> want = reference_components(cc.ps, cc.eps);
  for (int64_t i = 0; i < cc.ps.n; ++i) {
    if (labels.data()[i] != want[i]) {
      check.fail(format("labels[%lld] = %lld, want %lld", (long long)i, (long long)labels.data()[i], (long long)want[i]));
      break;
    }
  }
  expect_guards(check, "labels", labels);
}

std::vector<ComponentsCase> components_cases() {
  std::vector<ComponentsCase> cases;
  Rng rng(11);
  int k = 0;
  const auto add = [&](std::string name, std::vector<float> rows, int64_t n, int64_t d, double eps) {
    const int layout = k % 3, threads = 1 + k % 2;
    ++k;
    cases.push_back({format("%s N=%lld D=%lld eps=%.17g layout=%d threads=%d", name.c_str(), (long long)n,
                            (long long)d, eps, layout, threads),
                     make_points(std::move(rows), n, d, layout), eps, threads});
  };
  add("empty", {}, 0, 3, 1.0);
  add("one point", {2.5f}, 1, 1, 0.0);
  // (0, 0, 0) and (0.75, 1, 0) are 1.25 apart exactly: the radius is inclusive.
  const std::vector<float> two = {0.f, 0.f, 0.f, 0.75f, 1.f, 0.f};
  add("two points at the radius", two, 2, 3, 1.25);
  add("two points just beyond", two, 2, 3, std::nextafter(1.25, 0.0));
  add("two duplicates, eps 0", {1.5f, -2.f, 1.5f, -2.f}, 2, 2, 0.0);
  for (double eps : {0.25, std::nextafter(0.25, 0.0), 0.5, 0.0})
    add("1-D lattice step 0.25 at 1000", lattice(rng, 200, 1, 0.25, 1000.0, 300), 200, 1, eps);
  for (double eps : {0.5, 1.5, std::nextafter(1.5, 0.0), 0.0})
    add("3-D lattice step 0.5 with duplicates", lattice(rng, 400, 3, 0.5, -3.0, 9), 400, 3, eps);
  for (double eps : {1.0, 1.5, std::nextafter(1.0, 0.0), 0.0})
    add("100-D binary mutants", binary_mutants(rng, 300, 100, 6, 5), 300, 100, eps);
  {
    std::vector<float> rows = clusters(rng, 300, 100, 8, 0.08);
    const PointSet ps = make_points(rows, 300, 100, 0);
    add("100-D clusters", rows, 300, 100, 0.35);
    const double tie = std::sqrt(d2(ps, 3, ps, 7));  // a radius on an actual pair distance
    add("100-D clusters, eps on a pair's distance", rows, 300, 100, tie);
    add("100-D clusters, eps on a pair's distance", rows, 300, 100, std::nextafter(tie, 0.0));
  }
  add("3-D clusters, eps inf", clusters(rng, 50, 3, 3, 0.1), 50, 3, kInf);
  // Uniform points: many partly overlapping leader groups, so the group tiles take their
  // member-checking path (under ASan this caught lane masks with garbage upper bits).
  for (int64_t d : {1, 3}) {
    std::vector<float> rows(1000 * d);
    for (float& e : rows) e = float(rng.uniform());
    add("uniform points", rows, 1000, d, d == 1 ? 0.002 : 0.12);
  }
  // Beyond one leader-pass chunk (2048 points): chunks merge across threads.
  add("2-D lattice step 1, several chunks", lattice(rng, 5000, 2, 1.0, 0.0, 150), 5000, 2, 1.0);
  return cases;
}

void test_components(Group& g) {
  for (const ComponentsCase& cc : components_cases())
    g.run(cc.name, [&](Check& check) { run_components(check, cc); });
}

void run_assign(Check& check, const PointSet& x, const PointSet& centers, double eps, int threads) {
  Out<int64_t> index(x.n, -7);
  Out<float> distance(x.n, float(kNaN));
  gf::pairs::AssignParams p;
  p.x = x.view, p.centers = centers.view, p.eps = eps;
  p.index = index.ptr(), p.distance = distance.ptr();
  p.num_threads = threads;
  gf::pairs::assign_cpu(p);
  const double eps2 = eps * eps;
  for (int64_t i = 0; i < x.n; ++i) {
    double best = kInf;
    int64_t arg = -1;
    for (int64_t j = 0; j < centers.n; ++j) {
      const double s = d2(x, i, centers, j);
      if (s <= eps2 && s < best) best = s, arg = j;  // strict: ties keep the lowest index
    }
    const float want = arg >= 0 ? float(std::sqrt(best)) : std::numeric_limits<float>::infinity();
    if (index.data()[i] != arg || !(distance.data()[i] == want)) {
      check.fail(format("point %lld: index %lld distance %.9g, want %lld %.9g", (long long)i,
                        (long long)index.data()[i], double(distance.data()[i]), (long long)arg, double(want)));
      break;
    }
  }
  expect_guards(check, "index", index);
  expect_guards(check, "distance", distance);
}

void test_assign(Group& g) {
  Rng rng(12);
  int k = 0;
  const auto add = [&](const std::string& name, std::vector<float> x, int64_t n, std::vector<float> c, int64_t nc,
                       int64_t d, double eps) {
    const int layout = k % 3, threads = 1 + k % 2;
    ++k;
    const PointSet xs = make_points(std::move(x), n, d, layout);
    const PointSet cs = make_points(std::move(c), nc, d, 2 - layout);
    g.run(format("%s N=%lld C=%lld D=%lld eps=%.17g layout=%d threads=%d", name.c_str(), (long long)n, (long long)nc,
                 (long long)d, eps, layout, threads),
          [&](Check& check) { run_assign(check, xs, cs, eps, threads); });
  };
  add("no points", {}, 0, {1.f, 2.f, 3.f}, 1, 3, 1.0);
  add("no centers", {1.f, 2.f, 3.f, 4.f}, 2, {}, 0, 2, kInf);
  // Centers at equal distance: the lowest index wins, the radius is inclusive.
  for (double eps : {1.0, std::nextafter(1.0, 0.0), kInf})
    add("1-D equidistant centers", {0.f, 0.5f, -1.f}, 3, {1.f, -1.f, 1.f, 0.f}, 4, 1, eps);
  for (double eps : {0.0, 0.5, 1.5, std::nextafter(1.5, 0.0)}) {
    std::vector<float> c = lattice(rng, 20, 3, 0.5, 7.0, 5);
    std::copy_n(&c[3 * 3], 3, &c[11 * 3]);  // a duplicate center: index 3 wins
    add("3-D lattice with duplicate centers", lattice(rng, 300, 3, 0.5, 7.0, 5), 300, c, 20, 3, eps);
  }
  for (double eps : {0.5, 1.0, kInf})
    add("100-D clusters", clusters(rng, 400, 100, 10, 0.1), 400, clusters(rng, 30, 100, 10, 0.05), 30, 100, eps);
  for (double eps : {1.0, 1.5})
    add("100-D binary mutants", binary_mutants(rng, 200, 100, 4, 6), 200, binary_mutants(rng, 40, 100, 4, 2), 40, 100, eps);
}

struct CountSetup {
  PointSet ps;
  std::vector<double> radii;
  std::vector<int64_t> groups;  // with stride groups_stride, or empty
  int64_t groups_stride = 1;
  std::vector<int64_t> class_offsets;  // within-class mode when not empty
  std::vector<uint8_t> mask;
  bool neighbors = false;
  int threads = 1;
};

void run_count(Check& check, const CountSetup& s) {
  const int64_t n = s.ps.n, R = int64_t(s.radii.size());
  const bool by_class = !s.class_offsets.empty();
  const int64_t C = by_class ? int64_t(s.class_offsets.size()) - 1 : 0;
  Out<int64_t> counts(R, -7), same(s.groups.empty() ? 0 : R, -7), neighbors(s.neighbors ? n * R : 0, 0);
  std::vector<int64_t> tile_offsets(C + 1, 0);
  for (int64_t c = 0; c < C; ++c) {  // as grokfast.ops.pairs.count_within_classes
    const int64_t blocks = (s.class_offsets[c + 1] - s.class_offsets[c] + 63) / 64;
    tile_offsets[c + 1] = tile_offsets[c] + blocks * (blocks + 1) / 2;
  }
  std::vector<int64_t> stats(gf::pairs::kStats, 0);
  gf::pairs::CountParams p;
  p.x = s.ps.view;
  p.R = R;
  p.radii = ptr_of(s.radii.data());
  p.counts = counts.ptr();
  if (!s.groups.empty()) {
    p.groups = ptr_of(s.groups.data()), p.groups_stride = s.groups_stride;
    p.counts_same = same.ptr();
  }
  if (by_class) {
    p.C = C;
    p.class_offsets = ptr_of(s.class_offsets.data());
    p.tile_offsets = ptr_of(tile_offsets.data());
    p.total_tiles = tile_offsets[C];
    p.mask = ptr_or_0(s.mask);
    p.neighbors = s.neighbors ? neighbors.ptr() : 0;
  }
  p.stats = ptr_of(stats.data());
  p.num_threads = s.threads;
  gf::pairs::count_cpu(p);

  std::vector<int64_t> class_of(n, 0);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = s.class_offsets[c]; i < s.class_offsets[c + 1]; ++i) class_of[i] = c;
  std::vector<int64_t> want(R, 0), want_same(R, 0), want_nb(n * R, 0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) {
      if (by_class && class_of[i] != class_of[j]) continue;
      const double dd = d2(s.ps, i, s.ps, j);
      const bool in_i = s.mask.empty() || s.mask[i], in_j = s.mask.empty() || s.mask[j];
      for (int64_t k = 0; k < R; ++k) {
        if (!(dd <= s.radii[k] * s.radii[k])) continue;
        if (in_i && in_j) {
          ++want[k];
          if (!s.groups.empty() && s.groups[i * s.groups_stride] == s.groups[j * s.groups_stride]) ++want_same[k];
        }
        if (in_j) ++want_nb[i * R + k];  // neighbours counted from the mask's side
        if (in_i) ++want_nb[j * R + k];
      }
    }
  for (int64_t k = 0; k < R; ++k) {
    check.expect(counts.data()[k] == want[k], format("counts[%lld] = %lld, want %lld", (long long)k,
                                                     (long long)counts.data()[k], (long long)want[k]));
    if (same.n)
      check.expect(same.data()[k] == want_same[k], format("counts_same[%lld] = %lld, want %lld", (long long)k,
                                                          (long long)same.data()[k], (long long)want_same[k]));
  }
  for (int64_t i = 0; i < (s.neighbors ? n * R : 0); ++i)
    if (neighbors.data()[i] != want_nb[i]) {
      check.fail(format("neighbors[%lld, %lld] = %lld, want %lld", (long long)(i / R), (long long)(i % R),
                        (long long)neighbors.data()[i], (long long)want_nb[i]));
      break;
    }
  expect_guards(check, "counts", counts);
  expect_guards(check, "counts_same", same);
  expect_guards(check, "neighbors", neighbors);
}

void test_count(Group& g) {
  Rng rng(13);
  int k = 0;
  const auto add = [&](const std::string& name, CountSetup s) {
    s.threads = 1 + k % 2;
    ++k;
    std::string radii;
    for (double r : s.radii) radii += format("%s%.17g", radii.empty() ? "" : ",", r);
    const std::string where =
        format("%s N=%lld D=%lld radii=%s%s%s%s%s threads=%d", name.c_str(), (long long)s.ps.n, (long long)s.ps.d,
               radii.c_str(), s.groups.empty() ? "" : " groups", s.class_offsets.empty() ? "" : " classes",
               s.mask.empty() ? "" : " mask", s.neighbors ? " neighbors" : "", s.threads);
    g.run(where, [&](Check& check) { run_count(check, s); });
  };
  const auto groups = [&](int64_t n, int64_t stride, int64_t labels) {
    std::vector<int64_t> v(std::max<int64_t>(n * stride, 1), -99);
    for (int64_t i = 0; i < n; ++i) v[i * stride] = 1000 * rng.below(labels) - 7;  // any values
    return v;
  };
  const std::vector<double> lattice_radii = {0.0, 0.5, 1.5, std::nextafter(1.5, 0.0), 2.0, kInf};
  add("no points", {make_points({}, 0, 3, 0), {0.5, 1.0}});
  add("one point", {make_points({1.f, 2.f}, 1, 2, 1), {0.5, kInf}, groups(1, 1, 2)});
  add("two points at the radius", {make_points({0.f, 0.f, 0.f, 0.75f, 1.f, 0.f}, 2, 3, 2), {1.25, std::nextafter(1.25, 0.0)}});
  add("3-D lattice with duplicates", {make_points(lattice(rng, 300, 3, 0.5, 100.0, 6), 300, 3, 0), lattice_radii});
  {
    CountSetup s{make_points(lattice(rng, 300, 3, 0.5, -50.0, 6), 300, 3, 1), lattice_radii, groups(300, 2, 4), 2};
    add("3-D lattice, groups with stride 2", std::move(s));
  }
  add("1-D lattice", {make_points(lattice(rng, 1000, 1, 0.25, 1000.0, 400), 1000, 1, 2), {0.0, 0.25, 1.0, 3.75}, groups(1000, 1, 3)});
  {
    std::vector<float> rows = clusters(rng, 250, 100, 6, 0.08);
    PointSet ps = make_points(rows, 250, 100, 2);
    const double tie = std::sqrt(d2(ps, 1, ps, 2));
    add("100-D clusters", {std::move(ps), {0.1, 0.3, tie, std::nextafter(tie, 0.0), 1.0, 5.0}, groups(250, 1, 3)});
  }
  add("100-D binary mutants", {make_points(binary_mutants(rng, 200, 100, 5, 5), 200, 100, 0), {0.0, 1.0, 1.5, std::nextafter(1.5, 0.0)}});

  // Within classes: classes of sizes across the 64-point tiles, points sorted by class.
  const std::vector<int64_t> sizes = {1, 2, 70, 130, 5, 64, 65};
  std::vector<int64_t> offsets = {0};
  for (int64_t sz : sizes) offsets.push_back(offsets.back() + sz);
  const int64_t n = offsets.back();
  for (int variant = 0; variant < 6; ++variant) {
    const bool binary = variant >= 4;
    const int64_t d = binary ? 100 : 3;
    CountSetup s;
    s.ps = make_points(binary ? binary_mutants(rng, n, d, 3, 5) : lattice(rng, n, d, 0.5, 2.0, 4), n, d, variant % 3);
    s.radii = binary ? std::vector<double>{0.0, 1.0, 1.5} : std::vector<double>{0.0, 0.5, std::nextafter(1.0, 0.0), 1.0, 1.5};
    s.class_offsets = offsets;
    if (variant % 2 == 0) {
      s.mask.resize(n);
      for (uint8_t& m : s.mask) m = rng.below(10) < 7;
    }
    s.neighbors = variant != 1;
    add(binary ? "100-D binary mutants" : "3-D lattice", std::move(s));
  }
}

// ---------------------------------------------------------------------------------------------

struct GroupSpec {
  const char* name;
  void (*run)(Group&);
};

const GroupSpec kGroups[] = {
    {"rnn forward float32", test_forward<float>},
    {"rnn forward float64", test_forward<double>},
    {"rnn forward prefix sharing float32", test_forward_prefixes<float>},
    {"rnn forward prefix sharing float64", test_forward_prefixes<double>},
    {"rnn forward bad token ids float32", test_forward_bad_ids<float>},
    {"rnn empty sizes float32", test_rnn_empty<float>},
    {"rnn empty sizes float64", test_rnn_empty<double>},
    {"rnn tracking float32", test_track<float>},
    {"rnn tracking float64", test_track<double>},
    {"rnn backward float32", test_backward<float>},
    {"rnn backward float64", test_backward<double>},
    {"pairs components", test_components},
    {"pairs assign", test_assign},
    {"pairs count", test_count},
};

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& e : v) s += (s.empty() ? "" : ", ") + e;
  return s;
}

}  // namespace

int main() {
  const auto start = std::chrono::steady_clock::now();
  const std::vector<std::string> variants = gf::cpu::supported_isas();
  const std::vector<std::string> compiled = gf::cpu::compiled_isas();
  std::printf("cpu selftest: kernels built for %s (csrc/simd.h); variants compiled: %s; supported here: %s\n",
              GF_CPU_VARIANT_NAME, joined(compiled).c_str(), joined(variants).c_str());
  int groups_passed = 0, groups_failed = 0;
  // A plain build holds the one variant its flags select; the dispatcher must call it that.
  if (compiled.size() != 1 || compiled[0] != GF_CPU_VARIANT_NAME) {
    std::printf("[FAIL] the dispatcher lists %s, expected only %s\n", joined(compiled).c_str(),
                GF_CPU_VARIANT_NAME);
    ++groups_failed;
  }
  for (const std::string& isa : variants) {
    gf::cpu::set_isa(isa);
    if (gf::cpu::active_isa() != isa) {
      std::printf("[FAIL] %s: set_isa did not take effect (active: %s)\n", isa.c_str(), gf::cpu::active_isa().c_str());
      ++groups_failed;
      continue;
    }
    for (const GroupSpec& spec : kGroups) {
      const auto t0 = std::chrono::steady_clock::now();
      Group g;
      spec.run(g);
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (g.failed == 0) {
        ++groups_passed;
        std::printf("[ok]   %s %s: %d cases (%.0f ms)\n", isa.c_str(), spec.name, g.cases, ms);
      } else {
        ++groups_failed;
        std::printf("[FAIL] %s %s: %d of %d cases failed%s\n", isa.c_str(), spec.name, g.failed, g.cases,
                    g.messages.c_str());
      }
      std::fflush(stdout);
    }
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("cpu selftest (%s): %d groups passed, %d failed (%.1f s)\n", joined(variants).c_str(), groups_passed,
              groups_failed, s);
  return groups_failed == 0 && !variants.empty() ? 0 : 1;
}
