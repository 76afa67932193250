// The small Python-facing module atrous_cuda._C. Importing it also loads the
// TORCH_LIBRARY registrations of this shared library. It exposes build
// information and, for the tests, the shared index math of atrous_index.h.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>  // at::Tensor <-> torch.Tensor

#include <ATen/Parallel.h>

#include <c10/util/Exception.h>

#include <string>
#include <tuple>
#include <vector>

#include "assemble_index.h"
#include "atrous_index.h"
#include "cpu/gather_gemm.h"
#include "cpu/weight_cache.h"
#include "cpu/workspace.h"

#ifndef ATROUS_CUDA_ARCHS
#define ATROUS_CUDA_ARCHS ""
#endif
// The torch version the build was for (setup.py and CMakeLists.txt pass it).
#ifndef ATROUS_TORCH_VERSION
#define ATROUS_TORCH_VERSION "unknown"
#endif

namespace py = pybind11;

namespace {

std::vector<int64_t> band_begins(const atrous::AxisBands& b) {
  return std::vector<int64_t>(b.begin, b.begin + b.count + 1);
}

atrous::AxisBands bands_from_list(const std::vector<int64_t>& begins) {
  TORCH_CHECK(begins.size() >= 2 && begins.size() <= atrous::kMaxPixelBands + 1,
              "expected 2 to ", atrous::kMaxPixelBands + 1, " band boundaries, got ", begins.size());
  atrous::AxisBands b{};
  b.count = static_cast<int32_t>(begins.size() - 1);
  for (size_t i = 0; i < begins.size(); ++i) b.begin[i] = begins[i];
  return b;
}

// Whether any of a list of tensors changed since the list was taken: a
// version counter moved (an in-place update: an optimizer step,
// load_state_dict, `with torch.no_grad(): p.add_(...)`) or the data moved
// (p.data = ..., model.to(...)). WaveNet keeps its packed generation weights
// until its parameters change, and asks on every step: reading the 124
// versions of the nv-wavenet-sized model from Python took 17 us, this well
// under one. Inference tensors (made under torch.inference_mode) have no
// version counter: only their data pointer is watched.
class TensorVersions {
 public:
  explicit TensorVersions(std::vector<at::Tensor> watched) : tensors_(std::move(watched)) {
    for (const at::Tensor& t : tensors_) {
      versions_.push_back(version_of(t));
      data_.push_back(t.data_ptr());
    }
  }
  bool changed() const {
    for (size_t i = 0; i < tensors_.size(); ++i)
      if (version_of(tensors_[i]) != versions_[i] || tensors_[i].data_ptr() != data_[i]) return true;
    return false;
  }

 private:
  static int64_t version_of(const at::Tensor& t) { return t.is_inference() ? -1 : t._version(); }

 public:

 private:
  std::vector<at::Tensor> tensors_;
  std::vector<int64_t> versions_;
  std::vector<const void*> data_;
};

py::dict build_info() {
  py::dict info;
#ifdef ATROUS_WITH_CUDA
  info["with_cuda"] = true;
#else
  info["with_cuda"] = false;
#endif
  info["cuda_archs"] = std::string(ATROUS_CUDA_ARCHS);
  info["torch_version"] = std::string(ATROUS_TORCH_VERSION);
  info["cpu_isa"] = atrous::cpu::cpu_isa();
  info["cpu_isas_available"] = atrous::cpu::cpu_isas_available();
  info["cpu_threads"] = at::get_num_threads();
  info["cpu_parallel_backend"] = at::get_parallel_info();
  info["cpu_workspace_cache_limit"] = atrous::cpu::workspace_cache_limit();
  info["cpu_weight_cache_limit"] = atrous::cpu::weight_cache_stats().limit;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "atrous_cuda native module: build information and shared index math";
  m.def("build_info", &build_info, "How this extension was built and what it runs with.");
  py::class_<TensorVersions>(m, "TensorVersions",
                             "TensorVersions(tensors).changed(): whether any tensor was updated in place or "
                             "given new data since")
      .def(py::init<std::vector<at::Tensor>>(), py::arg("tensors"))
      .def("changed", &TensorVersions::changed);
  m.def("cpu_peak_gflops", &atrous::cpu::cpu_peak_gflops, py::arg("iters_per_thread") = 20000000,
        "Measured fp32 FMA peak (GFLOP/s) of the active CPU instruction set on every intra-op thread.");
  m.def("set_cpu_isa", &atrous::cpu::set_cpu_isa, py::arg("isa"),
        "Run the CPU GEMM with 'avx512', 'avx2' or 'baseline' (the tests cover every path).");
  m.def("cpu_workspace_cache_bytes", &atrous::cpu::workspace_cache_bytes,
        "Bytes of CPU workspace the pool holds for reuse now (cpu/workspace.h).");
  m.def("cpu_workspace_cache_limit", &atrous::cpu::workspace_cache_limit,
        "The most bytes of CPU workspace the pool keeps between calls.");
  m.def("set_cpu_workspace_cache_limit", &atrous::cpu::set_workspace_cache_limit, py::arg("bytes"),
        "Sets the pool's limit (0 turns it off) and frees what it holds above it.");
  m.def("empty_cpu_workspace_cache", &atrous::cpu::empty_workspace_cache,
        "Frees every CPU workspace buffer the pool holds.");
  m.def(
      "cpu_weight_cache_info",
      [] {
        const auto s = atrous::cpu::weight_cache_stats();
        py::dict d;
        d["bytes"] = s.bytes;
        d["entries"] = s.entries;
        d["limit"] = s.limit;
        d["hits"] = s.hits;
        d["misses"] = s.misses;
        return d;
      },
      "The packed-weight cache (cpu/weight_cache.h): bytes and packings held, limit, hits and misses.");
  m.def("set_cpu_weight_cache_limit", &atrous::cpu::set_weight_cache_limit, py::arg("bytes"),
        "Sets the packed-weight cache's limit (0 turns it off) and frees what it holds above it.");
  m.def("clear_cpu_weight_cache", &atrous::cpu::clear_weight_cache,
        "Frees every packed weight the cache holds (and the workspace pool's free buffers).");
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
  m.def(
      "forward_axis_bands",
      [](int64_t size, int64_t out, int64_t kernel, int64_t stride, int64_t pad_before,
         int64_t dilation) {
        return band_begins(
            atrous::forward_axis_bands(size, out, kernel, stride, pad_before, dilation));
      },
      py::arg("size"), py::arg("out"), py::arg("kernel"), py::arg("stride"), py::arg("pad_before"),
      py::arg("dilation"));
  m.def(
      "grad_input_axis_bands",
      [](int64_t size, int64_t out, int64_t kernel, int64_t stride, int64_t pad_before,
         int64_t dilation) {
        return band_begins(
            atrous::grad_input_axis_bands(size, out, kernel, stride, pad_before, dilation));
      },
      py::arg("size"), py::arg("out"), py::arg("kernel"), py::arg("stride"), py::arg("pad_before"),
      py::arg("dilation"));
  m.def(
      "pixel_order",
      [](int64_t batch, const std::vector<int64_t>& row_bands,
         const std::vector<int64_t>& col_bands) {
        const atrous::PixelOrder order{batch, bands_from_list(row_bands), bands_from_list(col_bands)};
        const int64_t total = batch * row_bands.back() * col_bands.back();
        std::vector<std::tuple<int64_t, int64_t, int64_t>> pixels;
        pixels.reserve(total);
        for (int64_t m = 0; m < total; ++m) {
          const atrous::Pixel px = atrous::pixel_at(order, m);
          pixels.emplace_back(px.n, px.y, px.x);
        }
        return pixels;
      },
      py::arg("batch"), py::arg("row_bands"), py::arg("col_bands"),
      "Every GEMM row's (n, y, x) in the CUDA kernels' tap-class order.");
  m.def("output_index_for_input", &atrous::output_index_for_input, py::arg("index"),
        py::arg("out"), py::arg("tap"), py::arg("stride"), py::arg("pad_before"),
        py::arg("dilation"));

  // Index math of the instance-assembling ops (assemble_index.h).
  namespace as = atrous::assemble;
  m.def("assemble_window_grid_size", &as::window_grid_size, py::arg("size"), py::arg("stride"));
  m.def("assemble_cell_of", &as::cell_of, py::arg("u"), py::arg("k"), py::arg("m"));
  m.def(
      "assemble_cell_span",
      [](int64_t i, int64_t k, int64_t m) {
        const as::Span s = as::cell_span(i, k, m);
        return std::make_tuple(s.begin, s.end);
      },
      py::arg("i"), py::arg("k"), py::arg("m"));
  m.def("assemble_source_pixel", &as::source_pixel, py::arg("centre"), py::arg("u"), py::arg("m"));
  m.def("assemble_window_reading", &as::window_reading, py::arg("h"), py::arg("u"), py::arg("m"),
        py::arg("stride"), py::arg("grid"));
  m.def("fcis_channel", &as::fcis_channel, py::arg("cls"), py::arg("t"), py::arg("i"),
        py::arg("j"), py::arg("k"));
  m.def("fcis_roi_sample", &as::roi_sample<double>, py::arg("lo"), py::arg("hi"),
        py::arg("scale"), py::arg("p"), py::arg("size"));
  m.def(
      "fcis_axis_sample",
      [](double pos, int64_t size) {
        const auto s = as::axis_sample<double>(pos, size);
        return std::make_tuple(s.low, s.frac);
      },
      py::arg("pos"), py::arg("size"));
  m.def(
      "fcis_touched_pixels",
      [](double lo, double hi, double scale, int64_t begin, int64_t end, int64_t out_size,
         int64_t size) {
        const as::Span s = as::touched_pixels<double>(lo, hi, scale, as::Span{begin, end},
                                                      out_size, size);
        return std::make_tuple(s.begin, s.end);
      },
      py::arg("lo"), py::arg("hi"), py::arg("scale"), py::arg("begin"), py::arg("end"),
      py::arg("out_size"), py::arg("size"));
}
