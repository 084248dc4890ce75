"""Pure-PyTorch references of the clip ops. They define the semantics the kernels are tested against and
are the fallback where no kernel was built. Math runs in float32 (float64 for float64 input)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation/output dtype of the LSE ops: float64 for float64 input, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def lse_aggregate_reference(logits: torch.Tensor) -> torch.Tensor:
    """logits [B, N, K] -> [B, K]: log of paper Eq. 5, i.e. logsumexp over clips minus logsumexp over
    (clips, classes)."""
    x = logits.to(acc_dtype(logits.dtype))
    return torch.logsumexp(x, dim=1) - torch.logsumexp(x.flatten(1), dim=1, keepdim=True)


def lse_aggregate_nll_reference(
    logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """logits [B, N, K], target [B] -> -lse_aggregate(logits)[b, target[b]], reduced (paper Eq. 6)."""
    return F.nll_loss(lse_aggregate_reference(logits), target, reduction=reduction)


def lse_aggregate_nll_value_and_grad_reference(
    logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d loss.sum() / d logits) of lse_aggregate_nll_reference, by autograd; no graph on either."""
    with torch.enable_grad():
        x = logits.detach().requires_grad_()
        loss = lse_aggregate_nll_reference(x, target, reduction)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    # autograd lays the gradient out as the logits are (transposed, say); the op promises a contiguous one, as
    # the kernels and the fake return it
    return loss.detach(), grad.contiguous()


def clip_aggregate_reference(logits: torch.Tensor, mode: str = "lse") -> torch.Tensor:
    """logits [B, N, K] -> [B, K] log-probs; mode "lse" | "mean" | "max" (paper Table 3)."""
    if mode == "lse":
        return lse_aggregate_reference(logits)
    x = logits.to(acc_dtype(logits.dtype))
    pooled = x.mean(dim=1) if mode == "mean" else x.amax(dim=1)
    return F.log_softmax(pooled, dim=-1)


def temporal_mean_reference(x: torch.Tensor) -> torch.Tensor:
    """x [B, T, ...] -> [B, ...] in x's dtype, accumulated in float32 (float64 for float64)."""
    return x.to(acc_dtype(x.dtype)).mean(dim=1).to(x.dtype)
