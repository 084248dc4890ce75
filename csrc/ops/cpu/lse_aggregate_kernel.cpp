// CPU kernels for lse_aggregate / lse_aggregate_nll and their backwards. One row (a video: N clips x K
// classes) per iteration of at::parallel_for; math in at::opmath_type (float for half/bfloat16/float).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "ops/checks.h"
#include "ops/cpu/cpu_math.h"

namespace clipbert::cpu {
namespace {

int64_t rows_per_task(int64_t row_elems) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(row_elems, 1));
}

void check_logits(const at::Tensor& logits, const char* op) {
  TORCH_CHECK(logits.device().is_cpu(), op, ": logits must be a CPU tensor here, got ", logits.device());
  TORCH_CHECK(is_kernel_float(logits), op, ": logits must be float32/float16/bfloat16/float64, got ",
              logits.scalar_type());
  TORCH_CHECK(logits.dim() == 3, op, ": logits must be [B, N, K], got ", shape_str(logits));
  TORCH_CHECK(logits.size(1) > 0 && logits.size(2) > 0, op,
              ": logits must be [B, N, K] with N > 0 clips and K > 0 classes, got ", shape_str(logits));
}

// Auxiliary tensors (grads, saved stats) are float32, or float64 for float64 logits.
void check_aux(const at::Tensor& t, at::ScalarType dtype, const char* op, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", shape_str(t));
}

void check_target(const at::Tensor& target, int64_t B, int64_t K, const char* op) {
  TORCH_CHECK(target.device().is_cpu(), op, ": target must be a CPU tensor, got ", target.device());
  TORCH_CHECK(target.scalar_type() == at::kLong, op, ": target must be int64, got ", target.scalar_type());
  TORCH_CHECK(target.dim() == 1 && target.size(0) == B, op, ": target must be [B] = [", B, "], got ",
              shape_str(target));
  const int64_t* t = target.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(t[b] >= 0 && t[b] < K, op, ": target[", b, "] = ", t[b], " is outside [0, K) = [0, ", K, ")");
}

void check_reduction(int64_t reduction, const char* op) {
  TORCH_CHECK(reduction >= 0 && reduction <= 2, op, ": reduction must be 0 (none), 1 (mean) or 2 (sum), got ",
              reduction);
}

// Rows of fewer classes than this take a column at a time (strided_lse): column_lse's vector loops over a
// handful of k cost more than they save (lse_aggregate at [128, 16, 2]: 44.6 us, a column at a time 25 us).
constexpr int64_t kNarrowRow = 4;

// lse over n of every column k of one [N, K] row. Inner loops run over contiguous k so they vectorize.
// On return m[k] holds lse_k.
template <typename scalar_t, typename acc_t>
void column_lse(const scalar_t* x, int64_t N, int64_t K, acc_t* m, acc_t* s) {
  std::fill(m, m + K, neg_inf<acc_t>());
  std::fill(s, s + K, acc_t(0));
  for (int64_t n = 0; n < N; ++n) {
    const scalar_t* xn = x + n * K;
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) {
      acc_t v = static_cast<acc_t>(xn[k]);
      m[k] = v > m[k] ? v : m[k];
    }
  }
  for (int64_t k = 0; k < K; ++k) m[k] = safe_shift(m[k]);
  for (int64_t n = 0; n < N; ++n) {
    const scalar_t* xn = x + n * K;
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) s[k] += fast_exp(static_cast<acc_t>(xn[k]) - m[k]);
  }
#pragma omp simd
  for (int64_t k = 0; k < K; ++k) m[k] = lse_of<true>(m[k], s[k]);
}

// logsumexp of n values at stride `stride`: used for the target column (n = N, small).
template <typename acc_t, typename scalar_t>
acc_t strided_lse(const scalar_t* v, int64_t n, int64_t stride) {
  acc_t m = neg_inf<acc_t>();
  for (int64_t i = 0; i < n; ++i) {
    acc_t x = static_cast<acc_t>(v[i * stride]);
    m = x > m ? x : m;
  }
  m = safe_shift(m);
  acc_t s = 0;
  for (int64_t i = 0; i < n; ++i) s += fast_exp(static_cast<acc_t>(v[i * stride]) - m);
  return lse_of(m, s);
}

// logsumexp of a contiguous row: a max pass, then a sum of exps. `omp simd reduction` lets the compiler
// split each sum into vector lanes (it may not reassociate a plain serial sum), which was 1.8x faster
// than hand-written lanes here (the lanes loop did not vectorize its exps).
template <typename acc_t, typename scalar_t>
acc_t contiguous_lse(const scalar_t* v, int64_t n) {
  acc_t m = neg_inf<acc_t>();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) {
    const acc_t x = static_cast<acc_t>(v[i]);
    m = x > m ? x : m;
  }
  m = safe_shift(m);
  acc_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += fast_exp(static_cast<acc_t>(v[i]) - m);
  return lse_of(m, s);
}

// Row losses [B] -> the loss for `reduction`: themselves (0), their mean (1, NaN for B = 0) or sum (2).
// A serial double sum: deterministic, and B is small next to the N*K work per row.
at::Tensor reduce_rows(const at::Tensor& row_loss, int64_t reduction) {
  if (reduction == 0) return row_loss;
  const int64_t B = row_loss.size(0);
  double total = 0;
  AT_DISPATCH_FLOATING_TYPES(row_loss.scalar_type(), "lse_aggregate_nll_sum", [&] {
    const scalar_t* rl = row_loss.const_data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) total += rl[b];
  });
  if (reduction == 1) total = B > 0 ? total / static_cast<double>(B) : std::numeric_limits<double>::quiet_NaN();
  return at::full({}, total, row_loss.options());
}

std::tuple<at::Tensor, at::Tensor> lse_aggregate_cpu(const at::Tensor& logits_in) {
  check_logits(logits_in, "lse_aggregate");
  const at::Tensor logits = logits_in.contiguous();
  const int64_t B = logits.size(0), N = logits.size(1), K = logits.size(2);
  const auto acc = at::toOpMathType(logits.scalar_type());
  auto out = at::empty({B, K}, logits.options().dtype(acc));
  auto lse_all = at::empty({B}, logits.options().dtype(acc));
  if (logits.numel() == 0) return {out, lse_all};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "lse_aggregate_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    acc_t* o = out.data_ptr<acc_t>();
    acc_t* l = lse_all.data_ptr<acc_t>();
    at::parallel_for(0, B, rows_per_task(N * K), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> m(K), s(K);
      for (int64_t b = begin; b < end; ++b) {
        if (K < kNarrowRow) {
          for (int64_t k = 0; k < K; ++k) m[k] = strided_lse<acc_t>(x + b * N * K + k, N, K);
        } else {
          column_lse(x + b * N * K, N, K, m.data(), s.data());
        }
        // lse over (n, k) = lse over k of the per-column lse.
        const acc_t total = contiguous_lse<acc_t>(m.data(), K);
        for (int64_t k = 0; k < K; ++k) o[b * K + k] = m[k] - total;
        l[b] = total;
      }
    });
  });
  return {out, lse_all};
}

// d out[b,k] / d x[b,n,j] = delta_jk softmax_n(x[:, k])[n] - softmax_{n,k}(x)[n, j], so
// grad[b,n,j] = g[b,j] exp(x - lse_all - out[j]) - (sum_k g[b,k]) exp(x - lse_all).
at::Tensor lse_aggregate_backward_cpu(const at::Tensor& grad_in, const at::Tensor& logits_in, const at::Tensor& out_in,
                                      const at::Tensor& lse_all_in) {
  check_logits(logits_in, "_lse_aggregate_backward");
  const int64_t B = logits_in.size(0), N = logits_in.size(1), K = logits_in.size(2);
  const auto acc = at::toOpMathType(logits_in.scalar_type());
  check_aux(grad_in, acc, "_lse_aggregate_backward", "grad_out", {B, K});
  check_aux(out_in, acc, "_lse_aggregate_backward", "out", {B, K});
  check_aux(lse_all_in, acc, "_lse_aggregate_backward", "lse_all", {B});
  const at::Tensor logits = logits_in.contiguous(), grad = grad_in.contiguous(), out = out_in.contiguous(),
                   lse_all = lse_all_in.contiguous();
  auto grad_x = at::empty_like(logits, at::MemoryFormat::Contiguous);
  if (logits.numel() == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "lse_aggregate_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    const acc_t* g = grad.const_data_ptr<acc_t>();
    const acc_t* o = out.const_data_ptr<acc_t>();
    const acc_t* l = lse_all.const_data_ptr<acc_t>();
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    at::parallel_for(0, B, rows_per_task(N * K), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const acc_t* gb = g + b * K;
        const acc_t* ob = o + b * K;
        acc_t g_sum = 0;
        for (int64_t k = 0; k < K; ++k) g_sum += gb[k];
        const acc_t lse = l[b];
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t* xn = x + (b * N + n) * K;
          scalar_t* gn = gx + (b * N + n) * K;
          for (int64_t k = 0; k < K; ++k) {
            const acc_t t = static_cast<acc_t>(xn[k]) - lse;  // log softmax over (n, k)
            gn[k] = static_cast<scalar_t>(gb[k] * fast_exp(t - ob[k]) - g_sum * fast_exp(t));
          }
        }
        // x - lse_k is taken as t - out[k], which is -inf - -inf = NaN where lse_k - lse_all overflowed to
        // out[k] = -inf while x - lse_all did too (logits near +-max of the accumulation dtype, e.g. bf16
        // ones of +-3.4e38). Such a column gets its lse again from the logits and its softmax over n from
        // it, as the reference's; columns -inf in every clip keep the formula's value (lse_k is -inf there
        // too). A separate pass, so the loop above stays branch-free: K compares a row if nothing overflowed.
        for (int64_t k = 0; k < K; ++k) {
          if (ob[k] != neg_inf<acc_t>()) continue;
          const scalar_t* xk = x + b * N * K + k;
          const acc_t lse_k = strided_lse<acc_t>(xk, N, K);
          if (lse_k == neg_inf<acc_t>()) continue;
          for (int64_t n = 0; n < N; ++n) {
            const acc_t xv = static_cast<acc_t>(xk[n * K]);
            gx[(b * N + n) * K + k] =
                static_cast<scalar_t>(gb[k] * fast_exp(xv - lse_k) - g_sum * fast_exp(xv - lse));
          }
        }
      }
    });
  });
  return grad_x;
}

std::tuple<at::Tensor, at::Tensor> lse_aggregate_nll_cpu(const at::Tensor& logits_in, const at::Tensor& target_in,
                                                         int64_t reduction) {
  check_logits(logits_in, "lse_aggregate_nll");
  check_reduction(reduction, "lse_aggregate_nll");
  const int64_t B = logits_in.size(0), N = logits_in.size(1), K = logits_in.size(2);
  const at::Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  check_target(target, B, K, "lse_aggregate_nll");
  auto stats = at::empty({B, 2}, logits.options().dtype(at::toOpMathType(logits.scalar_type())));
  auto row_loss = at::empty({B}, stats.options());
  if (B > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "lse_aggregate_nll_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* x = logits.const_data_ptr<scalar_t>();
      const int64_t* t = target.const_data_ptr<int64_t>();
      acc_t* st = stats.data_ptr<acc_t>();
      acc_t* rl = row_loss.data_ptr<acc_t>();
      at::parallel_for(0, B, rows_per_task(N * K), [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const scalar_t* xb = x + b * N * K;
          const acc_t lse_all = contiguous_lse<acc_t>(xb, N * K);
          const acc_t lse_t = strided_lse<acc_t>(xb + t[b], N, K);
          st[2 * b] = lse_all;
          st[2 * b + 1] = lse_t;
          rl[b] = lse_all - lse_t;
        }
      });
    });
  }
  return {reduce_rows(row_loss, reduction), stats};
}

// loss_b = lse_all - lse_t, so grad[b,n,j] = w_b (exp(x - lse_all) - [j == t_b] exp(x - lse_t)),
// w_b = grad_loss[b] (none), grad_loss (sum) or grad_loss / B (mean).
at::Tensor lse_aggregate_nll_backward_cpu(const at::Tensor& grad_in, const at::Tensor& logits_in,
                                          const at::Tensor& target_in, const at::Tensor& stats_in,
                                          int64_t reduction) {
  const char* op = "_lse_aggregate_nll_backward";
  check_logits(logits_in, op);
  check_reduction(reduction, op);
  const int64_t B = logits_in.size(0), N = logits_in.size(1), K = logits_in.size(2);
  const auto acc = at::toOpMathType(logits_in.scalar_type());
  if (reduction == 0)
    check_aux(grad_in, acc, op, "grad_loss", {B});
  else
    check_aux(grad_in, acc, op, "grad_loss", {});
  check_aux(stats_in, acc, op, "stats", {B, 2});
  const at::Tensor logits = logits_in.contiguous(), target = target_in.contiguous(), grad = grad_in.contiguous(),
                   stats = stats_in.contiguous();
  check_target(target, B, K, op);
  auto grad_x = at::empty_like(logits, at::MemoryFormat::Contiguous);
  if (logits.numel() == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "lse_aggregate_nll_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    const int64_t* t = target.const_data_ptr<int64_t>();
    const acc_t* g = grad.const_data_ptr<acc_t>();
    const acc_t* st = stats.const_data_ptr<acc_t>();
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    const acc_t scale = reduction == 1 ? acc_t(1) / static_cast<acc_t>(B) : acc_t(1);
    at::parallel_for(0, B, rows_per_task(N * K), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const acc_t w = (reduction == 0 ? g[b] : g[0]) * scale;
        const acc_t lse_all = st[2 * b], lse_t = st[2 * b + 1];
        const scalar_t* xb = x + b * N * K;
        scalar_t* gb = gx + b * N * K;
        for (int64_t i = 0; i < N * K; ++i)
          gb[i] = static_cast<scalar_t>(w * fast_exp(static_cast<acc_t>(xb[i]) - lse_all));
        for (int64_t n = 0; n < N; ++n) {
          const int64_t i = n * K + t[b];
          const acc_t xi = static_cast<acc_t>(xb[i]);
          gb[i] = static_cast<scalar_t>(w * (fast_exp(xi - lse_all) - fast_exp(xi - lse_t)));
        }
      }
    });
  });
  return grad_x;
}

// Value and gradient in one pass per row: the row's two logsumexps give its loss, and the gradient
// w (exp(x - lse_all) - [j == t] exp(x - lse_t)) is written while the row is still in cache, with w = 1/B
// for mean and 1 otherwise (for "none", the gradient of the summed row losses).
std::tuple<at::Tensor, at::Tensor> lse_aggregate_nll_value_and_grad_cpu(const at::Tensor& logits_in,
                                                                        const at::Tensor& target_in,
                                                                        int64_t reduction) {
  const char* op = "lse_aggregate_nll_value_and_grad";
  check_logits(logits_in, op);
  check_reduction(reduction, op);
  const int64_t B = logits_in.size(0), N = logits_in.size(1), K = logits_in.size(2);
  const at::Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  check_target(target, B, K, op);
  auto grad_x = at::empty_like(logits, at::MemoryFormat::Contiguous);
  auto row_loss = at::empty({B}, logits.options().dtype(at::toOpMathType(logits.scalar_type())));
  if (B > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "lse_nll_value_and_grad_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* x = logits.const_data_ptr<scalar_t>();
      const int64_t* t = target.const_data_ptr<int64_t>();
      acc_t* rl = row_loss.data_ptr<acc_t>();
      scalar_t* gx = grad_x.data_ptr<scalar_t>();
      const acc_t w = reduction == 1 ? acc_t(1) / static_cast<acc_t>(B) : acc_t(1);
      at::parallel_for(0, B, rows_per_task(N * K), [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const scalar_t* xb = x + b * N * K;
          scalar_t* gb = gx + b * N * K;
          const acc_t lse_all = contiguous_lse<acc_t>(xb, N * K);
          const acc_t lse_t = strided_lse<acc_t>(xb + t[b], N, K);
          rl[b] = lse_all - lse_t;
          // The NLL backward's loop, written out again on purpose: as one shared helper, GCC vectorized its
          // bfloat16 stores and both ops ran 2.5-3x slower on bf16 (measured at [512, 16, 154]).
          for (int64_t i = 0; i < N * K; ++i)
            gb[i] = static_cast<scalar_t>(w * fast_exp(static_cast<acc_t>(xb[i]) - lse_all));
          for (int64_t n = 0; n < N; ++n) {
            const int64_t i = n * K + t[b];
            const acc_t xi = static_cast<acc_t>(xb[i]);
            gb[i] = static_cast<scalar_t>(w * (fast_exp(xi - lse_all) - fast_exp(xi - lse_t)));
          }
        }
      });
    });
  }
  return {reduce_rows(row_loss, reduction), grad_x};
}

}  // namespace
}  // namespace clipbert::cpu

TORCH_LIBRARY_IMPL(clipbert, CPU, m) {
  m.impl("lse_aggregate", &clipbert::cpu::lse_aggregate_cpu);
  m.impl("_lse_aggregate_backward", &clipbert::cpu::lse_aggregate_backward_cpu);
  m.impl("lse_aggregate_nll", &clipbert::cpu::lse_aggregate_nll_cpu);
  m.impl("_lse_aggregate_nll_backward", &clipbert::cpu::lse_aggregate_nll_backward_cpu);
  m.impl("lse_aggregate_nll_value_and_grad", &clipbert::cpu::lse_aggregate_nll_value_and_grad_cpu);
}
