// The CUDA kernels instantiated for float (one file per dtype so they build in parallel).
#include "conv_kernels.cuh"

namespace atrous {
namespace cuda {
ATROUS_INSTANTIATE_CUDA_LAUNCHERS(float)
}  // namespace cuda
}  // namespace atrous
