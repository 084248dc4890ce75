// Branch-free exp/log helpers the compiler can vectorize (std::exp is a libm call per element, which
// keeps the loops scalar and made the fused kernels slower than ATen's vectorized logsumexp).
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace clipbert::cpu {

// Cephes-style expf: Cody-Waite reduction x = n ln2 + r, degree-6 polynomial on |r| <= ln2/2,
// 2^n by exponent bits. Relative error ~1e-7 (1-2 ulp). Inputs below -87.3 flush to ~1e-38 (not 0),
// which is harmless here because every result feeds a sum that holds at least one exp(0) = 1 term.
inline float fast_exp(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  // Round to nearest with the 1.5 * 2^23 trick (floor/rint would be a libm call without SSE4.1).
  const float magic = 12582912.0f;
  float fx = (x * 1.44269504088896341f + magic) - magic;
  float r = x - fx * 0.693359375f;
  r = r + fx * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(fx) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

inline double fast_exp(double x) { return std::exp(x); }

template <typename acc_t>
constexpr acc_t neg_inf() {
  return -std::numeric_limits<acc_t>::infinity();
}

// Shift used before exp: the max itself, or 0 when a whole slice is -inf (avoids -inf - -inf = nan).
template <typename acc_t>
inline acc_t safe_shift(acc_t m) {
  return m == neg_inf<acc_t>() ? acc_t(0) : m;
}

}  // namespace clipbert::cpu
