"""The Triton kernels as `clipbert_triton::` custom ops, so they get the same fakes and autograd
(clipbert/ops/_registry.py) as the compiled ops and work under torch.compile. Kernel modules are
imported on first call: triton reads TRITON_INTERPRET when a kernel module is imported."""

from __future__ import annotations

import torch

from clipbert.ops import _registry


@torch.library.custom_op("clipbert_triton::lse_aggregate", mutates_args=())
def lse_aggregate(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from clipbert.ops.triton.lse_aggregate import lse_aggregate_fwd

    return lse_aggregate_fwd(logits)


@torch.library.custom_op("clipbert_triton::_lse_aggregate_backward", mutates_args=())
def _lse_aggregate_backward(
    grad_out: torch.Tensor, logits: torch.Tensor, out: torch.Tensor, lse_all: torch.Tensor
) -> torch.Tensor:
    from clipbert.ops.triton.lse_aggregate import lse_aggregate_bwd

    return lse_aggregate_bwd(grad_out, logits, out, lse_all)


@torch.library.custom_op("clipbert_triton::lse_aggregate_nll", mutates_args=())
def lse_aggregate_nll(
    logits: torch.Tensor, target: torch.Tensor, reduction: int
) -> tuple[torch.Tensor, torch.Tensor]:
    from clipbert.ops.triton.lse_nll import lse_aggregate_nll_fwd

    return lse_aggregate_nll_fwd(logits, target, reduction)


@torch.library.custom_op("clipbert_triton::_lse_aggregate_nll_backward", mutates_args=())
def _lse_aggregate_nll_backward(
    grad_loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, stats: torch.Tensor, reduction: int
) -> torch.Tensor:
    from clipbert.ops.triton.lse_nll import lse_aggregate_nll_bwd

    return lse_aggregate_nll_bwd(grad_loss, logits, target, stats, reduction)


@torch.library.custom_op("clipbert_triton::lse_aggregate_nll_value_and_grad", mutates_args=())
def lse_aggregate_nll_value_and_grad(
    logits: torch.Tensor, target: torch.Tensor, reduction: int
) -> tuple[torch.Tensor, torch.Tensor]:
    from clipbert.ops.triton.lse_nll import lse_aggregate_nll_value_and_grad as kernel

    return kernel(logits, target, reduction)


@torch.library.custom_op("clipbert_triton::temporal_mean", mutates_args=())
def temporal_mean(x: torch.Tensor) -> torch.Tensor:
    from clipbert.ops.triton.temporal_mean import temporal_mean_fwd

    return temporal_mean_fwd(x)


@torch.library.custom_op("clipbert_triton::_temporal_mean_backward", mutates_args=())
def _temporal_mean_backward(grad: torch.Tensor, T: int) -> torch.Tensor:
    from clipbert.ops.triton.temporal_mean import temporal_mean_bwd

    return temporal_mean_bwd(grad, T)


lse_aggregate.register_fake(_registry._lse_fake)
lse_aggregate_nll.register_fake(_registry._nll_fake)
_lse_aggregate_backward.register_fake(_registry._logits_like)
_lse_aggregate_nll_backward.register_fake(_registry._logits_like)
lse_aggregate_nll_value_and_grad.register_fake(_registry._nll_value_and_grad_fake)
temporal_mean.register_fake(_registry._temporal_fake)
_temporal_mean_backward.register_fake(_registry._temporal_bwd_fake)
_registry.register("clipbert_triton")
