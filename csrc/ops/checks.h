// Helpers shared by the CPU and CUDA entry points. Every check message names the op, the argument and
// what was expected, e.g. "lse_aggregate: logits must be [B, N, K], got [3, 4]".
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <sstream>
#include <string>

namespace clipbert {

inline std::string shape_str(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

// Floating dtypes every kernel supports (double only so that gradcheck can run).
inline bool is_kernel_float(const at::Tensor& t) {
  auto d = t.scalar_type();
  return d == at::kFloat || d == at::kHalf || d == at::kBFloat16 || d == at::kDouble;
}

}  // namespace clipbert
