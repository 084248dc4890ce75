// CUDA kernels for temporal_mean and its backward.
//
// x is read as [B, T, R] with any B/T strides and contiguous inner R. The forward is memory-bound: each
// thread owns VEC outputs (one 128-bit store), reads T 128-bit vectors with fp32 accumulation, and the
// grid covers the B*R outputs, so every byte of x is read exactly once with full-width transactions.

#include <vector>

#include "ops/checks.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/kernels.h"

namespace clipbert::cuda {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, int VEC>
__global__ void temporal_mean_fwd_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, int64_t T,
                                         int64_t vec_per_row, int64_t stride_b, int64_t stride_t, int64_t total_vec) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  const acc_t inv_t = acc_t(1) / static_cast<acc_t>(T);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total_vec; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / vec_per_row, r = (i - b * vec_per_row) * VEC;
    const scalar_t* src = x + b * stride_b + r;
    acc_t acc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[j] = 0;
#pragma unroll 4
    for (int64_t t = 0; t < T; ++t) {
      const V v = *reinterpret_cast<const V*>(src + t * stride_t);
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] += static_cast<acc_t>(v.v[j]);
    }
    V o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) o.v[j] = static_cast<scalar_t>(acc[j] * inv_t);
    reinterpret_cast<V*>(out)[i] = o;
  }
}

// grad_x [B, T, R] contiguous = grad [B, R] / T.
template <typename scalar_t, int VEC>
__global__ void temporal_mean_bwd_kernel(const scalar_t* __restrict__ g, scalar_t* __restrict__ gx, int64_t T,
                                         int64_t R, int64_t total_vec) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  const acc_t inv_t = acc_t(1) / static_cast<acc_t>(T);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total_vec; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = i * VEC, bt = e / R, r = e - bt * R;
    const V v = *reinterpret_cast<const V*>(g + (bt / T) * R + r);
    V o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) o.v[j] = static_cast<scalar_t>(static_cast<acc_t>(v.v[j]) * inv_t);
    reinterpret_cast<V*>(gx)[i] = o;
  }
}

bool inner_dims_dense(const at::Tensor& x) {
  int64_t expected = 1;
  for (int64_t d = x.dim() - 1; d >= 2; --d) {
    if (x.size(d) != 1 && x.stride(d) != expected) return false;
    expected *= x.size(d);
  }
  return true;
}

unsigned blocks_for(int64_t total) {
  return static_cast<unsigned>(std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(1) << 30));
}

}  // namespace

at::Tensor temporal_mean_cuda(const at::Tensor& x_in) {
  const char* op = "temporal_mean";
  TORCH_CHECK(x_in.is_cuda(), op, ": x must be a CUDA tensor here, got ", x_in.device());
  TORCH_CHECK(is_kernel_float(x_in), op, ": x must be float32/float16/bfloat16/float64, got ", x_in.scalar_type());
  TORCH_CHECK(x_in.dim() >= 2, op, ": x must be [B, T, ...] with at least 2 dims, got ", shape_str(x_in));
  TORCH_CHECK(x_in.size(1) > 0, op, ": x must have T > 0 frames, got ", shape_str(x_in));
  const c10::cuda::CUDAGuard guard(x_in.device());
  // Strided B/T are read in place; only strided inner dims (rare: a permuted feature map) are copied.
  const at::Tensor x = inner_dims_dense(x_in) ? x_in : x_in.contiguous();
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.erase(out_shape.begin() + 1);
  auto out = at::empty(out_shape, x.options());
  if (out.numel() == 0) return out;
  const int64_t B = x.size(0), T = x.size(1), R = out.numel() / B, sb = x.stride(0), st = x.stride(1);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "temporal_mean_cuda", [&] {
    constexpr int VEC = vec_width<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.data_ptr<scalar_t>();
    const bool vec = R % VEC == 0 && sb % VEC == 0 && st % VEC == 0 && aligned16(xp) && aligned16(op_);
    if (vec) {
      const int64_t total = B * R / VEC;
      temporal_mean_fwd_kernel<scalar_t, VEC><<<blocks_for(total), kThreads, 0, stream>>>(xp, op_, T, R / VEC, sb, st,
                                                                                            total);
    } else {
      temporal_mean_fwd_kernel<scalar_t, 1><<<blocks_for(B * R), kThreads, 0, stream>>>(xp, op_, T, R, sb, st, B * R);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor temporal_mean_backward_cuda(const at::Tensor& grad_in, int64_t T) {
  const char* op = "_temporal_mean_backward";
  TORCH_CHECK(grad_in.is_cuda(), op, ": grad must be a CUDA tensor here, got ", grad_in.device());
  TORCH_CHECK(is_kernel_float(grad_in), op, ": grad must be float32/float16/bfloat16/float64, got ",
              grad_in.scalar_type());
  TORCH_CHECK(grad_in.dim() >= 1, op, ": grad must be [B, ...], got ", shape_str(grad_in));
  TORCH_CHECK(T > 0, op, ": T must be > 0, got ", T);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  std::vector<int64_t> shape(grad.sizes().begin(), grad.sizes().end());
  shape.insert(shape.begin() + 1, T);
  auto grad_x = at::empty(shape, grad.options());
  if (grad_x.numel() == 0) return grad_x;
  const int64_t R = grad.numel() / grad.size(0), total = grad_x.numel();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "temporal_mean_bwd_cuda", [&] {
    constexpr int VEC = vec_width<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    if (R % VEC == 0 && aligned16(g) && aligned16(gx))
      temporal_mean_bwd_kernel<scalar_t, VEC><<<blocks_for(total / VEC), kThreads, 0, stream>>>(g, gx, T, R,
                                                                                                 total / VEC);
    else
      temporal_mean_bwd_kernel<scalar_t, 1><<<blocks_for(total), kThreads, 0, stream>>>(g, gx, T, R, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_x;
}

}  // namespace clipbert::cuda
