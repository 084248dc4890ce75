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
// 2^n by exponent bits. Relative error ~1e-7 (1-2 ulp). Inputs below -87.3 flush to ~1e-38 (not 0): a
// select to 0 cost the lse forwards 7-19% (2 cores, 2026-11-28). Harmless where every sum holds its max's
// exp(0) = 1 term; a slice that is -inf throughout sums to under 1, and lse_of() reads that as -inf.
// NaN in, NaN out.
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

// Cephes-style logf for the per-column sums of exps: x = 2^e m with m in [sqrt(1/2), sqrt(2)), log(m) by a
// degree-9 polynomial in m - 1; error under 1e-7. Branch-free so that a loop of them vectorizes: a libm log
// per column was a third of lse_aggregate's CPU time at [128, 16, 1540]. The polynomial serves normal
// finite x > 0, which covers every sum that holds its max's exp(0) = 1; the sums that do not (0 for a
// column that is -inf in every clip, NaN or inf from a non-finite logit) take std::log's value by select
// (-inf, NaN, inf), so that a NaN logit stays NaN instead of reading as a large log (89 from its bits).
// fast_log_normal is the polynomial alone; fast_log adds the selects.
inline float fast_log_normal(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  float e = static_cast<float>(((bits >> 23) & 0xff) - 127);
  bits = (bits & 0x007fffff) | 0x3f800000;  // mantissa in [1, 2)
  float m;
  std::memcpy(&m, &bits, sizeof(m));
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1.0f : e;
  const float f = m - 1.0f, z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return f + y + 0.693359375f * e;
}

inline float fast_log(float x) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  const float special = x == 0.0f ? -inf : (x > 0.0f ? x : std::numeric_limits<float>::quiet_NaN());
  return x > 0.0f && x < inf ? fast_log_normal(x) : special;
}

inline double fast_log(double x) { return std::log(x); }

template <typename acc_t>
constexpr acc_t neg_inf() {
  return -std::numeric_limits<acc_t>::infinity();
}

// Shift used before exp: the max itself, or 0 when a whole slice is -inf (avoids -inf - -inf = nan).
template <typename acc_t>
inline acc_t safe_shift(acc_t m) {
  return m == neg_inf<acc_t>() ? acc_t(0) : m;
}

// The logsumexp of a slice from its shift (safe_shift of its max) and its sum of fast_exp(x - shift).
// A slice with a finite max sums to >= 1 (its max's exp(0) is exactly 1); one that is -inf throughout sums
// to under 1 (N flushed exps of ~1e-38, or 0): -inf, as torch.logsumexp. NaN sums (a NaN or +inf logit)
// compare false and stay NaN through the log. FastLog: fast_log for loops that vectorize; a single call is
// faster through libm's (measured: the narrow rows' three calls a row cost 3 us more at [128, 16, 2]).
template <bool FastLog = false, typename acc_t>
inline acc_t lse_of(acc_t shift, acc_t sum) {
  const acc_t log_sum = FastLog ? fast_log(sum) : std::log(sum);
  return sum < acc_t(1) ? neg_inf<acc_t>() : shift + log_sum;
}

}  // namespace clipbert::cpu
