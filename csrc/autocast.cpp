// Autocast for the atrous ops: under torch.autocast the forward runs in the
// autocast dtype, exactly as torch's own convolution does.
//
// torch lists conv1d/conv2d under the lower_precision_fp policy for CPU and
// CUDA: every floating-point tensor argument on the autocast device, except
// float64 ones, is cast to the *current* autocast dtype
// (torch.get_autocast_dtype(device)), through autocast's weight-cast cache,
// and the op is redispatched with autocast excluded. This file does the same
// for atrous::conv_forward. It lives in C++ rather than Python because
// torch.library.register_autocast casts to one dtype fixed at registration,
// whereas the conv policy follows whichever dtype the autocast region asks
// for (float16 or bfloat16), and because a C++ kernel also serves callers
// that never enter Python (AOTInductor packages, libtorch).
//
// conv_backward gets no autocast kernel: autocast's fallthrough leaves it
// alone, as torch leaves convolution_backward alone. Its inputs are the
// forward's saved (already cast) tensors and a gradient of the output's dtype.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace atrous {
namespace {

template <c10::DeviceType device_type>
at::Tensor conv_forward_autocast(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                 c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                 int64_t groups) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(device_type));
  const auto dtype = at::autocast::get_lower_precision_fp_from_device_type(device_type);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("atrous::conv_forward", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                               const std::optional<at::Tensor>&, c10::IntArrayRef,
                                               c10::IntArrayRef, c10::IntArrayRef, int64_t)>();
  return op.call(at::autocast::cached_cast(dtype, input, device_type),
                 at::autocast::cached_cast(dtype, weight, device_type),
                 at::autocast::cached_cast(dtype, bias, device_type), stride, padding, dilation,
                 groups);
}

}  // namespace

TORCH_LIBRARY_IMPL(atrous, AutocastCPU, m) {
  m.impl("conv_forward", &conv_forward_autocast<c10::DeviceType::CPU>);
}

// Registered in CPU-only builds too: it is plain host code, and it lets a
// test check the registration on a machine without a GPU.
TORCH_LIBRARY_IMPL(atrous, AutocastCUDA, m) {
  m.impl("conv_forward", &conv_forward_autocast<c10::DeviceType::CUDA>);
}

}  // namespace atrous
