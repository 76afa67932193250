// The small Python-facing module atrous_cuda._C. Importing it also loads the
// TORCH_LIBRARY registrations of this shared library. It exposes build
// information and, for the tests, the shared index math of atrous_index.h.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <ATen/Parallel.h>

#include <string>
#include <tuple>

#include "atrous_index.h"
#include "cpu/gather_gemm.h"

#ifndef ATROUS_CUDA_ARCHS
#define ATROUS_CUDA_ARCHS ""
#endif

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict info;
#ifdef ATROUS_WITH_CUDA
  info["with_cuda"] = true;
#else
  info["with_cuda"] = false;
#endif
  info["cuda_archs"] = std::string(ATROUS_CUDA_ARCHS);
  info["cpu_isa"] = atrous::cpu::cpu_isa();
  info["cpu_isas_available"] = atrous::cpu::cpu_isas_available();
  info["cpu_threads"] = at::get_num_threads();
  info["cpu_parallel_backend"] = at::get_parallel_info();
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "atrous_cuda native module: build information and shared index math";
  m.def("build_info", &build_info, "How this extension was built and what it runs with.");
  m.def("set_cpu_isa", &atrous::cpu::set_cpu_isa, py::arg("isa"),
        "Run the CPU GEMM with 'avx512', 'avx2' or 'baseline' (the tests cover every path).");
  m.def("conv_out_size", &atrous::conv_out_size, py::arg("size"), py::arg("pad_before"),
        py::arg("pad_after"), py::arg("kernel"), py::arg("stride"), py::arg("dilation"));
  m.def(
      "same_padding",
      [](int64_t size, int64_t kernel, int64_t stride, int64_t dilation) {
        const auto pad = atrous::same_padding(size, kernel, stride, dilation);
        return std::make_tuple(pad.before, pad.after);
      },
      py::arg("size"), py::arg("kernel"), py::arg("stride"), py::arg("dilation"));
  m.def(
      "valid_out_range",
      [](int64_t size, int64_t out, int64_t tap, int64_t stride, int64_t pad_before,
         int64_t dilation) {
        const auto r = atrous::valid_out_range(size, out, tap, stride, pad_before, dilation);
        return std::make_tuple(r.begin, r.end);
      },
      py::arg("size"), py::arg("out"), py::arg("tap"), py::arg("stride"), py::arg("pad_before"),
      py::arg("dilation"));
  m.def("output_index_for_input", &atrous::output_index_for_input, py::arg("index"),
        py::arg("out"), py::arg("tap"), py::arg("stride"), py::arg("pad_before"),
        py::arg("dilation"));
}
