// Schemas of the clip-aggregation ops (paper Eq. 5-6). The CPU and CUDA kernels register themselves in
// cpu/lse_aggregate_kernel.cpp and cuda/lse_aggregate_kernel.cu; autograd in autograd.cpp, and fake
// (meta) kernels in Python (clipbert/ops/_registry.py).
#include <torch/library.h>

TORCH_LIBRARY(clipbert, m) {
  // logits [B, N, K] -> (out [B, K] float32 log-probs, lse_all [B] float32 = logsumexp over N and K).
  // lse_all is an auxiliary, non-differentiable output the backward needs.
  m.def("lse_aggregate(Tensor logits) -> (Tensor, Tensor)");
  // grad_out [B, K] f32, logits [B, N, K], out [B, K] f32, lse_all [B] f32 -> grad_logits [B, N, K]
  m.def("_lse_aggregate_backward(Tensor grad_out, Tensor logits, Tensor out, Tensor lse_all) -> Tensor");
  // logits [B, N, K], target [B] int64, reduction 0 none | 1 mean | 2 sum
  //   -> (loss: [B] or [] float32, stats [B, 2] float32 = (lse_all, lse over N of the target column))
  m.def("lse_aggregate_nll(Tensor logits, Tensor target, int reduction) -> (Tensor, Tensor)");
  // grad_loss like loss -> grad_logits [B, N, K]
  m.def(
      "_lse_aggregate_nll_backward(Tensor grad_loss, Tensor logits, Tensor target, Tensor stats, "
      "int reduction) -> Tensor");
  // The loss of lse_aggregate_nll and its gradient in one kernel: logits [B, N, K], target [B] int64,
  // reduction -> (loss [B] or [] float32, grad_logits [B, N, K] in the logits' dtype = d loss.sum() / d logits).
  // Not differentiable: for callers that drive backward themselves (no autograd node, nothing saved).
  m.def("lse_aggregate_nll_value_and_grad(Tensor logits, Tensor target, int reduction) -> (Tensor, Tensor)");
}
