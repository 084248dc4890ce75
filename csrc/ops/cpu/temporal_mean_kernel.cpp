// CPU kernels for temporal_mean and its backward. x is read as [B, T, R] with arbitrary B and T strides
// and contiguous inner R (the frames' feature maps); only if the inner dims themselves are strided do we
// copy (.contiguous()), which is rare and costs one extra pass.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "ops/checks.h"
#include "ops/cpu/cpu_math.h"

namespace clipbert::cpu {
namespace {

constexpr int64_t kChunk = 512;  // output elements per task: the float accumulator stays in L1

// True when dims 2.. of x are laid out like a contiguous tensor (size-1 dims may have any stride).
bool inner_dims_dense(const at::Tensor& x) {
  int64_t expected = 1;
  for (int64_t d = x.dim() - 1; d >= 2; --d) {
    if (x.size(d) != 1 && x.stride(d) != expected) return false;
    expected *= x.size(d);
  }
  return true;
}

void check_x(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor here, got ", x.device());
  TORCH_CHECK(is_kernel_float(x), op, ": x must be float32/float16/bfloat16/float64, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 2, op, ": x must be [B, T, ...] with at least 2 dims, got ", shape_str(x));
  TORCH_CHECK(x.size(1) > 0, op, ": x must have T > 0 frames, got ", shape_str(x));
}

at::Tensor temporal_mean_cpu(const at::Tensor& x_in) {
  check_x(x_in, "temporal_mean");
  const at::Tensor x = inner_dims_dense(x_in) ? x_in : x_in.contiguous();
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.erase(out_shape.begin() + 1);
  auto out = at::empty(out_shape, x.options());
  if (out.numel() == 0) return out;
  const int64_t B = x.size(0), T = x.size(1), R = out.numel() / B;
  const int64_t sb = x.stride(0), st = x.stride(1);
  const int64_t chunks = (R + kChunk - 1) / kChunk;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "temporal_mean_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const acc_t inv_t = acc_t(1) / static_cast<acc_t>(T);
    const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (kChunk * T));
    at::parallel_for(0, B * chunks, grain, [&](int64_t begin, int64_t end) {
      acc_t acc[kChunk];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / chunks, r0 = (task % chunks) * kChunk, len = std::min(kChunk, R - r0);
        const scalar_t* src = xp + b * sb + r0;
        std::fill(acc, acc + len, acc_t(0));
        for (int64_t t = 0; t < T; ++t) {
          const scalar_t* row = src + t * st;
          for (int64_t i = 0; i < len; ++i) acc[i] += static_cast<acc_t>(row[i]);
        }
        scalar_t* dst = op + b * R + r0;
        for (int64_t i = 0; i < len; ++i) dst[i] = static_cast<scalar_t>(acc[i] * inv_t);
      }
    });
  });
  return out;
}

at::Tensor temporal_mean_backward_cpu(const at::Tensor& grad_in, int64_t T) {
  const char* op = "_temporal_mean_backward";
  TORCH_CHECK(grad_in.device().is_cpu(), op, ": grad must be a CPU tensor here, got ", grad_in.device());
  TORCH_CHECK(is_kernel_float(grad_in), op, ": grad must be float32/float16/bfloat16/float64, got ",
              grad_in.scalar_type());
  TORCH_CHECK(grad_in.dim() >= 1, op, ": grad must be [B, ...], got ", shape_str(grad_in));
  TORCH_CHECK(T > 0, op, ": T must be > 0, got ", T);
  const at::Tensor grad = grad_in.contiguous();
  std::vector<int64_t> shape(grad.sizes().begin(), grad.sizes().end());
  shape.insert(shape.begin() + 1, T);
  auto grad_x = at::empty(shape, grad.options());
  if (grad_x.numel() == 0) return grad_x;
  const int64_t B = grad.size(0), R = grad.numel() / B;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "temporal_mean_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    const acc_t inv_t = acc_t(1) / static_cast<acc_t>(T);
    at::parallel_for(0, B * T, std::max<int64_t>(1, at::internal::GRAIN_SIZE / R), [&](int64_t begin, int64_t end) {
      for (int64_t bt = begin; bt < end; ++bt) {
        const scalar_t* src = g + (bt / T) * R;
        scalar_t* dst = gx + bt * R;
        for (int64_t i = 0; i < R; ++i) dst[i] = static_cast<scalar_t>(static_cast<acc_t>(src[i]) * inv_t);
      }
    });
  });
  return grad_x;
}

}  // namespace
}  // namespace clipbert::cpu

TORCH_LIBRARY_IMPL(clipbert, CPU, m) {
  m.impl("temporal_mean", &clipbert::cpu::temporal_mean_cpu);
  m.impl("_temporal_mean_backward", &clipbert::cpu::temporal_mean_backward_cpu);
}
