// Host-side helpers shared by every device's kernels (see atrous_conv.h).
// The op schema itself is in schema.cpp.
#include "atrous_conv.h"
#include "arg_checks.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>
#include <c10/util/safe_numerics.h>

#include <cstdlib>
#include <limits>

namespace atrous {

namespace {

// torch's rule for a conv's output layout: the strides suggest channels_last
// (c10's is_channels_last_strides_2d, which also decides the layouts that
// size-1 dimensions make ambiguous: a 1x1 weight with strides (C, 1, C, C) is
// channels_last, one with (C, 1, 1, 1) is not).
bool strides_like_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

}  // namespace

ConvParams make_conv_params(const char* op, const at::Tensor& input, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                            c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(input.dim() == 4, op, ": expected input of 4 dimensions (N, C, H, W), got ",
              input.dim(), " dimensions of size ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, op,
              ": expected weight of 4 dimensions (out_channels, in_channels/groups, kH, kW), got ",
              weight.dim(), " dimensions of size ", weight.sizes());
  TORCH_CHECK(supported_dtype(input.scalar_type()), op,
              ": expected input of dtype float32, float64, float16 or bfloat16, got ",
              input.scalar_type());
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), op,
              ": expected weight of the input's dtype ", input.scalar_type(), ", got ",
              weight.scalar_type());
  TORCH_CHECK(weight.device() == input.device(), op, ": expected weight on the input's device ",
              input.device(), ", got ", weight.device());
  TORCH_CHECK(stride.size() == 2, op, ": expected stride of 2 ints (H, W), got ",
              list_str(stride));
  TORCH_CHECK(padding.size() == 4, op,
              ": expected padding of 4 ints (top, bottom, left, right), got ", list_str(padding));
  TORCH_CHECK(dilation.size() == 2, op, ": expected dilation of 2 ints (H, W), got ",
              list_str(dilation));
  for (const auto v : stride)
    TORCH_CHECK(v > 0, op, ": expected every stride > 0, got ", list_str(stride));
  for (const auto v : dilation)
    TORCH_CHECK(v > 0, op, ": expected every dilation > 0, got ", list_str(dilation));
  for (const auto v : padding)
    TORCH_CHECK(v >= 0, op, ": expected every padding >= 0, got ", list_str(padding));
  TORCH_CHECK(groups > 0, op, ": expected groups > 0, got ", groups);

  ConvParams p{};
  p.batch = input.size(0);
  p.in_channels = input.size(1);
  p.in_height = input.size(2);
  p.in_width = input.size(3);
  p.out_channels = weight.size(0);
  p.kernel_height = weight.size(2);
  p.kernel_width = weight.size(3);
  p.stride_h = stride[0];
  p.stride_w = stride[1];
  p.pad_top = padding[0];
  p.pad_bottom = padding[1];
  p.pad_left = padding[2];
  p.pad_right = padding[3];
  p.dilation_h = dilation[0];
  p.dilation_w = dilation[1];
  p.groups = groups;

  TORCH_CHECK(p.out_channels > 0, op, ": expected weight with at least one output channel, got ",
              weight.sizes());
  // torch returns an oddly shaped empty tensor here; a clear error is more useful.
  TORCH_CHECK(p.in_channels > 0, op, ": expected input with at least one channel, got input of size ",
              input.sizes());
  TORCH_CHECK(p.kernel_height > 0 && p.kernel_width > 0, op,
              ": expected a kernel of at least 1x1, got weight of size ", weight.sizes());
  TORCH_CHECK(p.in_channels % groups == 0, op, ": expected in_channels (", p.in_channels,
              ") divisible by groups (", groups, ")");
  TORCH_CHECK(p.out_channels % groups == 0, op, ": expected out_channels (", p.out_channels,
              ") divisible by groups (", groups, ")");
  TORCH_CHECK(weight.size(1) * groups == p.in_channels, op, ": weight of size ", weight.sizes(),
              " and groups=", groups, " expect input with ", weight.size(1) * groups,
              " channels, got input of size ", input.sizes(), " with ", p.in_channels,
              " channels");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == p.out_channels, op,
                ": expected bias of size [", p.out_channels, "], got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), op,
                ": expected bias of the input's dtype ", input.scalar_type(), ", got ",
                bias->scalar_type());
    TORCH_CHECK(bias->device() == input.device(), op, ": expected bias on the input's device ",
                input.device(), ", got ", bias->device());
  }

  // Sizes past int64 would wrap in conv_out_size and in the kernels' index
  // math (torch itself wraps silently for a huge dilation), so refuse them:
  // both the padded input and the dilated kernel extent must fit in int64.
  const auto fits = [](int64_t size, int64_t before, int64_t after) {
    int64_t sum = 0;
    return !c10::add_overflows(size, before, &sum) && !c10::add_overflows(sum, after, &sum);
  };
  TORCH_CHECK(fits(p.in_height, p.pad_top, p.pad_bottom) && fits(p.in_width, p.pad_left, p.pad_right), op,
              ": expected padding whose padded input size fits in int64, got padding ",
              list_str(padding), " for input of size ", input.sizes());
  const auto extent_fits = [](int64_t kernel, int64_t dilation) {
    int64_t extent = 0;
    return !c10::mul_overflows(kernel - 1, dilation, &extent) &&
           extent < std::numeric_limits<int64_t>::max();
  };
  TORCH_CHECK(extent_fits(p.kernel_height, p.dilation_h) && extent_fits(p.kernel_width, p.dilation_w), op,
              ": expected dilation whose dilated kernel extent dilation * (kernel - 1) + 1 fits in int64, "
              "got dilation ", list_str(dilation), " with weight of size ", weight.sizes());

  p.out_height = conv_out_size(p.in_height, p.pad_top, p.pad_bottom, p.kernel_height, p.stride_h,
                               p.dilation_h);
  p.out_width = conv_out_size(p.in_width, p.pad_left, p.pad_right, p.kernel_width, p.stride_w,
                              p.dilation_w);
  TORCH_CHECK(p.out_height > 0 && p.out_width > 0, op, ": padded input of size (",
              p.in_height + p.pad_top + p.pad_bottom, ", ", p.in_width + p.pad_left + p.pad_right,
              ") is smaller than the dilated kernel (",
              p.dilation_h * (p.kernel_height - 1) + 1, ", ",
              p.dilation_w * (p.kernel_width - 1) + 1,
              "); expected a kernel no larger than the padded input");
  int64_t output_bytes = input.element_size();
  bool too_large = false;
  for (const int64_t extent : output_shape(p))
    too_large = too_large || c10::mul_overflows(output_bytes, extent, &output_bytes);
  TORCH_CHECK(!too_large, op, ": the output of size ", c10::IntArrayRef(output_shape(p)),
              " would take more than 2^63 bytes; expected a smaller input or padding");
  return p;
}

void check_grad_output(const char* op, const ConvParams& p, const at::Tensor& grad_output,
                       const at::Tensor& input) {
  const auto expected = output_shape(p);
  TORCH_CHECK(grad_output.sizes() == c10::IntArrayRef(expected), op,
              ": expected grad_output of size ", c10::IntArrayRef(expected), ", got ",
              grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), op,
              ": expected grad_output of the input's dtype ", input.scalar_type(), ", got ",
              grad_output.scalar_type());
  TORCH_CHECK(grad_output.device() == input.device(), op,
              ": expected grad_output on the input's device ", input.device(), ", got ",
              grad_output.device());
}

at::MemoryFormat output_memory_format(const at::Tensor& input, const at::Tensor& weight) {
  return strides_like_channels_last(input) || strides_like_channels_last(weight)
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

bool poison_outputs_requested() {
  const char* v = std::getenv("ATROUS_POISON");
  return v != nullptr && v[0] == '1';
}

void poison(at::Tensor& t) {
  if (poison_outputs_requested() && t.numel() > 0) t.fill_(std::numeric_limits<double>::quiet_NaN());
}

at::Tensor allocate_output(const ConvParams& p, const at::Tensor& input, const at::Tensor& weight) {
  at::Tensor out = at::empty(output_shape(p),
                             input.options().memory_format(output_memory_format(input, weight)));
  poison(out);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> allocate_gradients(const ConvParams& p,
                                                                  const at::Tensor& input,
                                                                  const at::Tensor& weight,
                                                                  std::array<bool, 3> output_mask) {
  const auto fmt = output_memory_format(input, weight);
  at::Tensor grad_input = output_mask[0]
                              ? at::empty(input.sizes(), input.options().memory_format(fmt))
                              : at::empty({0}, input.options());
  at::Tensor grad_weight = output_mask[1]
                               ? at::empty(weight.sizes(), weight.options().memory_format(fmt))
                               : at::empty({0}, weight.options());
  at::Tensor grad_bias = output_mask[2] ? at::empty({p.out_channels}, weight.options())
                                        : at::empty({0}, weight.options());
  poison(grad_input);
  poison(grad_weight);
  poison(grad_bias);
  return {grad_input, grad_weight, grad_bias};
}

std::array<int64_t, 4> output_shape(const ConvParams& p) {
  return {p.batch, p.out_channels, p.out_height, p.out_width};
}

}  // namespace atrous
