// The CUDA kernels instantiated for double (one file per dtype so they build in parallel).
#include "conv_kernels.cuh"

namespace atrous {
namespace cuda {
ATROUS_INSTANTIATE_CUDA_LAUNCHERS(double)
}  // namespace cuda
}  // namespace atrous
