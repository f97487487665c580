// All pybind11 code. Python validates and allocates; these functions only dispatch, with the
// GIL released while a kernel runs.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

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
      .def_readwrite("w_ih_t", &rnn::ForwardParams::w_ih_t)
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

  py::class_<rnn::BackwardParams>(m, "RnnBackwardParams")
      .def(py::init<>())
      .def_readwrite("M", &rnn::BackwardParams::M)
      .def_readwrite("B", &rnn::BackwardParams::B)
      .def_readwrite("T", &rnn::BackwardParams::T)
      .def_readwrite("H", &rnn::BackwardParams::H)
      .def_readwrite("I", &rnn::BackwardParams::I)
      .def_readwrite("O", &rnn::BackwardParams::O)
      .def_readwrite("activation", &rnn::BackwardParams::activation)
      .def_readwrite("dtype", &rnn::BackwardParams::dtype)
      .def_readwrite("states", &rnn::BackwardParams::states)
      .def_readwrite("w_hh", &rnn::BackwardParams::w_hh)
      .def_readwrite("g_all", &rnn::BackwardParams::g_all)
      .def_readwrite("g_last", &rnn::BackwardParams::g_last)
      .def_readwrite("gy_mode", &rnn::BackwardParams::gy_mode)
      .def_readwrite("gy", &rnn::BackwardParams::gy)
      .def_readwrite("w_out", &rnn::BackwardParams::w_out)
      .def_readwrite("ids", &rnn::BackwardParams::ids)
      .def_readwrite("ids_stride_m", &rnn::BackwardParams::ids_stride_m)
      .def_readwrite("ids_stride_b", &rnn::BackwardParams::ids_stride_b)
      .def_readwrite("ids_stride_t", &rnn::BackwardParams::ids_stride_t)
      .def_readwrite("d_bias", &rnn::BackwardParams::d_bias)
      .def_readwrite("d_w_ih_t", &rnn::BackwardParams::d_w_ih_t)
      .def_readwrite("d_w_out", &rnn::BackwardParams::d_w_out)
      .def_readwrite("d_b_out", &rnn::BackwardParams::d_b_out)
      .def_readwrite("dz_next", &rnn::BackwardParams::dz_next)
      .def_readwrite("dz0", &rnn::BackwardParams::dz0)
      .def_readwrite("dh0", &rnn::BackwardParams::dh0)
      .def_readwrite("d_w_hh", &rnn::BackwardParams::d_w_hh)
      .def_readwrite("h0", &rnn::BackwardParams::h0)
      .def_readwrite("stream", &rnn::BackwardParams::stream)
      .def_readwrite("num_threads", &rnn::BackwardParams::num_threads);

  m.def("rnn_forward", [](const rnn::ForwardParams& p, const std::string& backend) {
    dispatch<rnn::ForwardParams>(p, backend, &rnn::forward_cpu, &rnn::forward_emulated,
                                 GF_CUDA_OR_NULL(&rnn::forward_cuda));
  });
  m.def("rnn_backward", [](const rnn::BackwardParams& p, const std::string& backend) {
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
#ifdef GROKFAST_WITH_CUDA
  m.attr("cuda_compiled") = true;
#else
  m.attr("cuda_compiled") = false;
#endif
}
