// Which compiled variant of the CPU kernels runs (csrc/simd.h): the best one this CPU supports,
// or the one GROKFAST_CPU_ISA or set_isa names. The kernels' public entry points
// (gf::rnn::forward_cpu, gf::pairs::components_cpu, ...) dispatch through it.
#pragma once
#include <string>
#include <vector>

namespace gf::cpu {

// Variants built into this library, best first (e.g. avx512, avx2, baseline).
std::vector<std::string> compiled_isas();
// Those this CPU can run, best first.
std::vector<std::string> supported_isas();
// The variant in use: on first use the one GROKFAST_CPU_ISA names (auto: the best supported).
// Throws std::invalid_argument when that names one unknown, not compiled or not supported here.
std::string active_isa();
// Uses `name` ("auto": the best supported) from now on, for every thread; throws
// std::invalid_argument like active_isa, with `what` naming the setting in the message.
void set_isa(const std::string& name, const std::string& what = "isa");

}  // namespace gf::cpu
