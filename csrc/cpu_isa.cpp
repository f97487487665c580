// Run-time choice of the CPU kernels' variant. This file is compiled for the baseline ISA:
// only the kernels behind the table may use wider instructions.
#include "cpu_isa.h"

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

#include "pairs/pairs.h"
#include "rnn/rnn.h"
#include "simd.h"

// Each variant's entry points, defined by its build of csrc/rnn/rnn_cpu.cpp and
// csrc/pairs/pairs_cpu.cpp.
#define GF_DECLARE_VARIANT(v)                                   \
  namespace gf::rnn::v {                                        \
  void forward_cpu(const ForwardParams& p);                     \
  void backward_cpu(const BackwardParams& p);                   \
  }                                                             \
  namespace gf::pairs::v {                                      \
  void components_cpu(const ComponentsParams& p);               \
  void assign_cpu(const AssignParams& p);                       \
  void count_cpu(const CountParams& p);                         \
  }
#define GF_VARIANT_ENTRY(v, runnable)                                                      \
  Kernels {                                                                                \
    GF_STRINGIFY(v), runnable, &gf::rnn::v::forward_cpu, &gf::rnn::v::backward_cpu,                     \
        &gf::pairs::v::components_cpu, &gf::pairs::v::assign_cpu, &gf::pairs::v::count_cpu \
  }

// CMake lists the variants it built (GF_CPU_VARIANTS_LISTED); a plain compile of the sources
// (a cross compiler, the self-test) builds the one its flags select.
#ifdef GF_CPU_VARIANTS_LISTED
#ifdef GF_CPU_HAVE_AVX512
GF_DECLARE_VARIANT(avx512)
#endif
#ifdef GF_CPU_HAVE_AVX2
GF_DECLARE_VARIANT(avx2)
#endif
#ifdef GF_CPU_HAVE_BASELINE
GF_DECLARE_VARIANT(baseline)
#endif
#ifdef GF_CPU_HAVE_NEON
GF_DECLARE_VARIANT(neon)
#endif
#else
GF_DECLARE_VARIANT(GF_CPU_VARIANT)
#endif

namespace gf::cpu {
namespace {

struct Kernels {
  const char* name;
  bool (*runnable)();
  void (*rnn_forward)(const rnn::ForwardParams&);
  void (*rnn_backward)(const rnn::BackwardParams&);
  void (*components)(const pairs::ComponentsParams&);
  void (*assign)(const pairs::AssignParams&);
  void (*count)(const pairs::CountParams&);
};

bool always() { return true; }
#if defined(__x86_64__) || defined(__i386__)
// x86-64-v4 and -v3, the levels the variants are compiled for (CPUID and the OS's saved state).
[[maybe_unused]] bool has_avx512() {
  __builtin_cpu_init();
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
  return __builtin_cpu_supports("x86-64-v4");
#else
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx2") &&
         __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
#endif
}
[[maybe_unused]] bool has_avx2() {
  __builtin_cpu_init();
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
  return __builtin_cpu_supports("x86-64-v3");
#else
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
         __builtin_cpu_supports("f16c");
#endif
}
#endif

// Best first.
const std::vector<Kernels>& variants() {
  static const std::vector<Kernels> table = {
#ifdef GF_CPU_VARIANTS_LISTED
#ifdef GF_CPU_HAVE_AVX512
      GF_VARIANT_ENTRY(avx512, has_avx512),
#endif
#ifdef GF_CPU_HAVE_AVX2
      GF_VARIANT_ENTRY(avx2, has_avx2),
#endif
#ifdef GF_CPU_HAVE_BASELINE
      GF_VARIANT_ENTRY(baseline, always),
#endif
#ifdef GF_CPU_HAVE_NEON
      GF_VARIANT_ENTRY(neon, always),
#endif
#elif defined(__x86_64__) && GF_VECTOR_BYTES == 64
      GF_VARIANT_ENTRY(GF_CPU_VARIANT, has_avx512),
#elif defined(__x86_64__) && GF_VECTOR_BYTES == 32
      GF_VARIANT_ENTRY(GF_CPU_VARIANT, has_avx2),
#else
      GF_VARIANT_ENTRY(GF_CPU_VARIANT, always),
#endif
  };
  return table;
}

std::string joined(const std::vector<std::string>& names) {
  std::string s;
  for (const std::string& n : names) s += (s.empty() ? "" : ", ") + n;
  return s.empty() ? "none" : s;
}

const Kernels& resolve(const std::string& name, const std::string& what) {
  const std::vector<Kernels>& all = variants();
  if (name == "auto" || name.empty()) {
    for (const Kernels& k : all)
      if (k.runnable()) return k;
    throw std::invalid_argument(what + "=auto: this CPU can run none of the compiled variants (" +
                                joined(compiled_isas()) + ")");
  }
  for (const Kernels& k : all) {
    if (name != k.name) continue;
    if (!k.runnable())
      throw std::invalid_argument(what + "=" + name + ": this CPU cannot run the " + name +
                                  " kernels (it supports: " + joined(supported_isas()) + ")");
    return k;
  }
  const bool known = name == "avx512" || name == "avx2" || name == "baseline" || name == "neon";
  throw std::invalid_argument(
      what + "=" + name + ": " +
      (known ? "not compiled into this build" : "unknown variant (expected auto, avx512, avx2, baseline or neon)") +
      "; compiled: " + joined(compiled_isas()) + ", supported here: " + joined(supported_isas()));
}

std::atomic<const Kernels*> g_active{nullptr};
std::mutex g_resolve;

const Kernels& active() {
  if (const Kernels* k = g_active.load(std::memory_order_acquire)) return *k;
  std::lock_guard<std::mutex> lock(g_resolve);
  if (const Kernels* k = g_active.load(std::memory_order_acquire)) return *k;
  const char* env = std::getenv("GROKFAST_CPU_ISA");
  const Kernels& k = resolve(env ? env : "auto", "GROKFAST_CPU_ISA");
  g_active.store(&k, std::memory_order_release);
  return k;
}

}  // namespace

std::vector<std::string> compiled_isas() {
  std::vector<std::string> names;
  for (const Kernels& k : variants()) names.push_back(k.name);
  return names;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (const Kernels& k : variants())
    if (k.runnable()) names.push_back(k.name);
  return names;
}

std::string active_isa() { return active().name; }

void set_isa(const std::string& name, const std::string& what) {
  const Kernels& k = resolve(name, what);
  std::lock_guard<std::mutex> lock(g_resolve);
  g_active.store(&k, std::memory_order_release);
}

}  // namespace gf::cpu

namespace gf::rnn {
void forward_cpu(const ForwardParams& p) { cpu::active().rnn_forward(p); }
void backward_cpu(const BackwardParams& p) { cpu::active().rnn_backward(p); }
}  // namespace gf::rnn

namespace gf::pairs {
void components_cpu(const ComponentsParams& p) { cpu::active().components(p); }
void assign_cpu(const AssignParams& p) { cpu::active().assign(p); }
void count_cpu(const CountParams& p) { cpu::active().count(p); }
}  // namespace gf::pairs
