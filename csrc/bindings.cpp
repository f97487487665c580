// All pybind11 code. Python validates and allocates; these functions only dispatch, with the
// GIL released while a kernel runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "cpu_isa.h"
#include "pairs/pairs.h"
#include "rnn/rnn.h"

#ifdef GROKFAST_WITH_CUDA
#include <cuda_runtime.h>
#endif

#ifdef GROKFAST_WITH_CUDA
#define GF_CUDA_OR_NULL(fn) (fn)
#else
#define GF_CUDA_OR_NULL(fn) nullptr
#endif

namespace py = pybind11;
using namespace gf;

namespace {

int cuda_device_count() {
#ifdef GROKFAST_WITH_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

[[noreturn]] void unknown_backend(const std::string& backend) {
  throw std::invalid_argument("unknown backend '" + backend +
                              "' (expected 'cpu', 'cuda' or 'cuda-emulated')");
}

template <class P>
void dispatch(const P& p, const std::string& backend, void (*cpu)(const P&),
              void (*emulated)(const P&), [[maybe_unused]] void (*cuda)(const P&)) {
  py::gil_scoped_release release;
  if (backend == "cpu") return cpu(p);
  if (backend == "cuda-emulated") return emulated(p);
  if (backend == "cuda") {
#ifdef GROKFAST_WITH_CUDA
    return cuda(p);
#else
    throw std::invalid_argument("grokfast was built without CUDA; rebuild with a CUDA toolkit on the PATH");
#endif
  }
  unknown_backend(backend);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "grokfast compiled kernels (internal; use grokfast.ops)";

  py::enum_<rnn::Activation>(m, "Activation")
      .value("Tanh", rnn::Activation::Tanh)
      .value("Relu", rnn::Activation::Relu);
  py::enum_<rnn::OutputMode>(m, "OutputMode")
      .value("None_", rnn::OutputMode::None)
      .value("Last", rnn::OutputMode::Last)
      .value("All", rnn::OutputMode::All);
  py::enum_<DType>(m, "DType").value("Float32", DType::Float32).value("Float64", DType::Float64);

  py::class_<rnn::ForwardParams>(m, "RnnForwardParams")
      .def(py::init<>())
      .def_readwrite("M", &rnn::ForwardParams::M)
      .def_readwrite("B", &rnn::ForwardParams::B)
      .def_readwrite("T", &rnn::ForwardParams::T)
      .def_readwrite("I", &rnn::ForwardParams::I)
      .def_readwrite("H", &rnn::ForwardParams::H)
      .def_readwrite("O", &rnn::ForwardParams::O)
      .def_readwrite("tokens", &rnn::ForwardParams::tokens)
      .def_readwrite("activation", &rnn::ForwardParams::activation)
      .def_readwrite("dtype", &rnn::ForwardParams::dtype)
      .def_readwrite("x", &rnn::ForwardParams::x)
      .def_readwrite("x_stride_m", &rnn::ForwardParams::x_stride_m)
      .def_readwrite("x_stride_b", &rnn::ForwardParams::x_stride_b)
      .def_readwrite("x_stride_t", &rnn::ForwardParams::x_stride_t)
      .def_readwrite("x_stride_i", &rnn::ForwardParams::x_stride_i)
      .def_readwrite("w_ih", &rnn::ForwardParams::w_ih)
      .def_readwrite("w_ih_stride_h", &rnn::ForwardParams::w_ih_stride_h)
      .def_readwrite("w_ih_stride_i", &rnn::ForwardParams::w_ih_stride_i)
      .def_readwrite("w_hh", &rnn::ForwardParams::w_hh)
      .def_readwrite("bias", &rnn::ForwardParams::bias)
      .def_readwrite("h0", &rnn::ForwardParams::h0)
      .def_readwrite("w_out", &rnn::ForwardParams::w_out)
      .def_readwrite("b_out", &rnn::ForwardParams::b_out)
      .def_readwrite("y_mode", &rnn::ForwardParams::y_mode)
      .def_readwrite("y", &rnn::ForwardParams::y)
      .def_readwrite("h_all", &rnn::ForwardParams::h_all)
      .def_readwrite("h_last", &rnn::ForwardParams::h_last)
      .def_readwrite("stream", &rnn::ForwardParams::stream)
      .def_readwrite("num_threads", &rnn::ForwardParams::num_threads)
      .def_readwrite("generate_tokens", &rnn::ForwardParams::generate_tokens)
      .def_readwrite("seed", &rnn::ForwardParams::seed);

  py::class_<rnn::TrackParams>(m, "RnnTrackParams")
      .def(py::init<>())
      .def_readwrite("S", &rnn::TrackParams::S)
      .def_readwrite("centers", &rnn::TrackParams::centers)
      .def_readwrite("center_state", &rnn::TrackParams::center_state)
      .def_readwrite("K", &rnn::TrackParams::K)
      .def_readwrite("machine_next", &rnn::TrackParams::machine_next)
      .def_readwrite("machine_initial", &rnn::TrackParams::machine_initial)
      .def_readwrite("Q", &rnn::TrackParams::Q)
      .def_readwrite("target_next", &rnn::TrackParams::target_next)
      .def_readwrite("target_out", &rnn::TrackParams::target_out)
      .def_readwrite("target_initial", &rnn::TrackParams::target_initial)
      .def_readwrite("first_disagreement", &rnn::TrackParams::first_disagreement)
      .def_readwrite("agree_steps", &rnn::TrackParams::agree_steps)
      .def_readwrite("correct_steps", &rnn::TrackParams::correct_steps)
      .def_readwrite("max_distance", &rnn::TrackParams::max_distance);

  // The training path's calls: every field positionally in one call (pointers as integers, 0
  // for absent), which costs a few percent of filling a Params object field by field.
  m.def("rnn_forward_call",
        [](const std::string& backend, int64_t M, int64_t B, int64_t T, int64_t I, int64_t H,
           int64_t O, bool tokens, int activation, bool float64, ptr_t x, int64_t x_stride_m,
           int64_t x_stride_b, int64_t x_stride_t, int64_t x_stride_i, ptr_t w_ih,
           int64_t w_ih_stride_h, int64_t w_ih_stride_i, ptr_t w_hh, ptr_t bias, ptr_t h0,
           ptr_t w_out, ptr_t b_out, int y_mode, ptr_t y, ptr_t h_all, ptr_t h_last,
           ptr_t stream) {
          rnn::ForwardParams p;
          p.M = M, p.B = B, p.T = T, p.I = I, p.H = H, p.O = O;
          p.tokens = tokens;
          p.activation = rnn::Activation(activation);
          p.dtype = float64 ? DType::Float64 : DType::Float32;
          p.x = x, p.x_stride_m = x_stride_m, p.x_stride_b = x_stride_b;
          p.x_stride_t = x_stride_t, p.x_stride_i = x_stride_i;
          p.w_ih = w_ih, p.w_ih_stride_h = w_ih_stride_h, p.w_ih_stride_i = w_ih_stride_i;
          p.w_hh = w_hh, p.bias = bias, p.h0 = h0, p.w_out = w_out, p.b_out = b_out;
          p.y_mode = rnn::OutputMode(y_mode);
          p.y = y, p.h_all = h_all, p.h_last = h_last, p.stream = stream;
          dispatch<rnn::ForwardParams>(p, backend, &rnn::forward_cpu, &rnn::forward_emulated,
                                       GF_CUDA_OR_NULL(&rnn::forward_cuda));
        });
  m.def("rnn_backward_call",
        [](const std::string& backend, int64_t M, int64_t B, int64_t T, int64_t H, int64_t I,
           int64_t O, int activation, bool float64, ptr_t states, ptr_t w_hh, ptr_t g_all,
           ptr_t g_last, int gy_mode, ptr_t gy, ptr_t w_out, ptr_t ids, int64_t ids_stride_m,
           int64_t ids_stride_b, int64_t ids_stride_t, ptr_t d_bias, ptr_t d_w_ih,
           int64_t d_w_ih_stride_h, int64_t d_w_ih_stride_i, ptr_t d_w_out, ptr_t d_b_out,
           ptr_t dz_next, ptr_t dz0, ptr_t dh0, ptr_t d_w_hh, ptr_t h0, ptr_t stream) {
          rnn::BackwardParams p;
          p.M = M, p.B = B, p.T = T, p.H = H, p.I = I, p.O = O;
          p.activation = rnn::Activation(activation);
          p.dtype = float64 ? DType::Float64 : DType::Float32;
          p.states = states, p.w_hh = w_hh, p.g_all = g_all, p.g_last = g_last;
          p.gy_mode = rnn::OutputMode(gy_mode), p.gy = gy, p.w_out = w_out;
          p.ids = ids, p.ids_stride_m = ids_stride_m, p.ids_stride_b = ids_stride_b;
          p.ids_stride_t = ids_stride_t;
          p.d_bias = d_bias, p.d_w_ih = d_w_ih, p.d_w_ih_stride_h = d_w_ih_stride_h;
          p.d_w_ih_stride_i = d_w_ih_stride_i, p.d_w_out = d_w_out, p.d_b_out = d_b_out;
          p.dz_next = dz_next, p.dz0 = dz0, p.dh0 = dh0, p.d_w_hh = d_w_hh, p.h0 = h0;
          p.stream = stream;
          dispatch<rnn::BackwardParams>(p, backend, &rnn::backward_cpu, &rnn::backward_emulated,
                                        GF_CUDA_OR_NULL(&rnn::backward_cuda));
        });
  // The forward with an automaton tracked alongside (TrackParams): only per-sequence results.
  m.def("rnn_track", [](rnn::ForwardParams p, const rnn::TrackParams& track,
                        const std::string& backend) {
    p.track = &track;
    dispatch<rnn::ForwardParams>(p, backend, &rnn::forward_cpu, &rnn::forward_emulated,
                                 GF_CUDA_OR_NULL(&rnn::forward_cuda));
  });
  m.def("rnn_max_hidden_gpu", &rnn::max_hidden_gpu_kernel);

  // Pair kernels (csrc/pairs): components, assign, count.
  py::class_<pairs::Points>(m, "PairsPoints")
      .def(py::init<>())
      .def_readwrite("data", &pairs::Points::data)
      .def_readwrite("n", &pairs::Points::n)
      .def_readwrite("d", &pairs::Points::d)
      .def_readwrite("stride_n", &pairs::Points::stride_n)
      .def_readwrite("stride_d", &pairs::Points::stride_d);
  py::class_<pairs::ComponentsParams>(m, "PairsComponentsParams")
      .def(py::init<>())
      .def_readwrite("x", &pairs::ComponentsParams::x)
      .def_readwrite("eps", &pairs::ComponentsParams::eps)
      .def_readwrite("labels", &pairs::ComponentsParams::labels)
      .def_readwrite("workspace", &pairs::ComponentsParams::workspace)
      .def_readwrite("workspace_bytes", &pairs::ComponentsParams::workspace_bytes)
      .def_readwrite("stats", &pairs::ComponentsParams::stats)
      .def_readwrite("stream", &pairs::ComponentsParams::stream)
      .def_readwrite("num_threads", &pairs::ComponentsParams::num_threads);
  py::class_<pairs::AssignParams>(m, "PairsAssignParams")
      .def(py::init<>())
      .def_readwrite("x", &pairs::AssignParams::x)
      .def_readwrite("centers", &pairs::AssignParams::centers)
      .def_readwrite("eps", &pairs::AssignParams::eps)
      .def_readwrite("index", &pairs::AssignParams::index)
      .def_readwrite("distance", &pairs::AssignParams::distance)
      .def_readwrite("workspace", &pairs::AssignParams::workspace)
      .def_readwrite("workspace_bytes", &pairs::AssignParams::workspace_bytes)
      .def_readwrite("stats", &pairs::AssignParams::stats)
      .def_readwrite("stream", &pairs::AssignParams::stream)
      .def_readwrite("num_threads", &pairs::AssignParams::num_threads);
  py::class_<pairs::CountParams>(m, "PairsCountParams")
      .def(py::init<>())
      .def_readwrite("x", &pairs::CountParams::x)
      .def_readwrite("R", &pairs::CountParams::R)
      .def_readwrite("radii", &pairs::CountParams::radii)
      .def_readwrite("groups", &pairs::CountParams::groups)
      .def_readwrite("groups_stride", &pairs::CountParams::groups_stride)
      .def_readwrite("counts", &pairs::CountParams::counts)
      .def_readwrite("counts_same", &pairs::CountParams::counts_same)
      .def_readwrite("C", &pairs::CountParams::C)
      .def_readwrite("class_offsets", &pairs::CountParams::class_offsets)
      .def_readwrite("tile_offsets", &pairs::CountParams::tile_offsets)
      .def_readwrite("total_tiles", &pairs::CountParams::total_tiles)
      .def_readwrite("mask", &pairs::CountParams::mask)
      .def_readwrite("neighbors", &pairs::CountParams::neighbors)
      .def_readwrite("workspace", &pairs::CountParams::workspace)
      .def_readwrite("workspace_bytes", &pairs::CountParams::workspace_bytes)
      .def_readwrite("stats", &pairs::CountParams::stats)
      .def_readwrite("stream", &pairs::CountParams::stream)
      .def_readwrite("num_threads", &pairs::CountParams::num_threads);
  m.attr("pairs_num_stats") = int(pairs::kStats);
  m.attr("pairs_max_points_gpu") = pairs::kMaxPointsGpu;
  m.attr("pairs_max_radii_gpu") = pairs::kMaxRadiiGpu;
  m.def("pairs_components", [](const pairs::ComponentsParams& p, const std::string& backend) {
    dispatch<pairs::ComponentsParams>(p, backend, &pairs::components_cpu, &pairs::components_emulated,
                                      GF_CUDA_OR_NULL(&pairs::components_cuda));
  });
  m.def("pairs_assign", [](const pairs::AssignParams& p, const std::string& backend) {
    dispatch<pairs::AssignParams>(p, backend, &pairs::assign_cpu, &pairs::assign_emulated,
                                  GF_CUDA_OR_NULL(&pairs::assign_cuda));
  });
  m.def("pairs_count", [](const pairs::CountParams& p, const std::string& backend) {
    dispatch<pairs::CountParams>(p, backend, &pairs::count_cpu, &pairs::count_emulated,
                                 GF_CUDA_OR_NULL(&pairs::count_cuda));
  });
  // Workspace bytes the GPU backends need (0 is enough for the CPU backend).
  m.def("pairs_components_workspace", &pairs::components_workspace_bytes);
  m.def("pairs_assign_workspace", &pairs::assign_workspace_bytes);
  m.def("pairs_count_workspace", &pairs::count_workspace_bytes);
  m.def("cuda_device_count", &cuda_device_count);
  // CPU kernel variants (csrc/cpu_isa.h).
  m.def("cpu_isas_compiled", &cpu::compiled_isas);
  m.def("cpu_isas_supported", &cpu::supported_isas);
  m.def("cpu_isa", &cpu::active_isa);
  m.def("set_cpu_isa", [](const std::string& name) { cpu::set_isa(name, "isa"); });
#ifdef GROKFAST_WITH_CUDA
  m.attr("cuda_compiled") = true;
#else
  m.attr("cuda_compiled") = false;
#endif
}
