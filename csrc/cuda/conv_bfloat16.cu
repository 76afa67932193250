// The CUDA kernels instantiated for c10::BFloat16 (one file per dtype so they build in parallel).
#include "conv_kernels.cuh"

namespace atrous {
namespace cuda {
ATROUS_INSTANTIATE_CUDA_LAUNCHERS(c10::BFloat16)
}  // namespace cuda
}  // namespace atrous
