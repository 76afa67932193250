// The CUDA kernels instantiated for c10::Half (one file per dtype so they build in parallel).
#include "conv_kernels.cuh"

namespace atrous {
namespace cuda {
ATROUS_INSTANTIATE_CUDA_LAUNCHERS(c10::Half)
}  // namespace cuda
}  // namespace atrous
