// Registers the CUDA kernels with the `clipbert` op library (csrc/ops/*.cpp declares the schemas). Kept out
// of the .cu files: torch/library.h alone cost nvcc about 28 s a file, g++ about 6 s once.
#include <torch/library.h>

#include "ops/cuda/kernels.h"

TORCH_LIBRARY_IMPL(clipbert, CUDA, m) {
  m.impl("lse_aggregate", &clipbert::cuda::lse_aggregate_cuda);
  m.impl("_lse_aggregate_backward", &clipbert::cuda::lse_aggregate_backward_cuda);
  m.impl("lse_aggregate_nll", &clipbert::cuda::lse_aggregate_nll_cuda);
  m.impl("_lse_aggregate_nll_backward", &clipbert::cuda::lse_aggregate_nll_backward_cuda);
  m.impl("lse_aggregate_nll_value_and_grad", &clipbert::cuda::lse_aggregate_nll_value_and_grad_cuda);
  m.impl("temporal_mean", &clipbert::cuda::temporal_mean_cuda);
  m.impl("_temporal_mean_backward", &clipbert::cuda::temporal_mean_backward_cuda);
}
