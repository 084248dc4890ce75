// The CUDA ops' host entry points, defined in the .cu files and registered in register.cpp.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace clipbert::cuda {

// lse_aggregate_kernel.cu
std::tuple<at::Tensor, at::Tensor> lse_aggregate_cuda(const at::Tensor& logits);  // (log_probs [B, K], lse_all [B])
at::Tensor lse_aggregate_backward_cuda(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& out,
                                       const at::Tensor& lse_all);
std::tuple<at::Tensor, at::Tensor> lse_aggregate_nll_cuda(const at::Tensor& logits, const at::Tensor& target,
                                                          int64_t reduction);  // (loss, stats [B, 2])
at::Tensor lse_aggregate_nll_backward_cuda(const at::Tensor& grad, const at::Tensor& logits,
                                           const at::Tensor& target, const at::Tensor& stats, int64_t reduction);
int set_nll_kernel(int kernel);  // returns the previous NllKernel (lse_common.cuh)

// lse_nll_value_and_grad_kernel.cu: (loss, d loss / d logits) from one kernel
std::tuple<at::Tensor, at::Tensor> lse_aggregate_nll_value_and_grad_cuda(const at::Tensor& logits,
                                                                         const at::Tensor& target, int64_t reduction);

// temporal_mean_kernel.cu
at::Tensor temporal_mean_cuda(const at::Tensor& x);
at::Tensor temporal_mean_backward_cuda(const at::Tensor& grad, int64_t T);

}  // namespace clipbert::cuda
