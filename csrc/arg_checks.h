// Small helpers shared by the argument checks of every op (atrous_conv.cpp,
// assemble.cpp), so their error messages read the same.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <sstream>
#include <string>

namespace atrous {

// How a list argument appears in an error message: "[1, 2]".
inline std::string list_str(c10::IntArrayRef v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// The dtypes every kernel is instantiated for.
inline bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

}  // namespace atrous
